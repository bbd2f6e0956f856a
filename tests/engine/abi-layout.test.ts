import { describe, expect, test } from "bun:test";
import { ABI_STRUCTS, nativeLayout } from "../../src/engine/native.ts";

describe("the ABI structs", () => {
  for (const layout of ABI_STRUCTS) {
    test(`${layout.name}: TypeScript's size and every field offset equal the C compiler's`, () => {
      expect({ struct: layout.name, size: layout.size }).toEqual({
        struct: layout.name,
        size: nativeLayout(layout.name),
      });
      for (const [field, offset] of layout.offsets) {
        expect({ field, offset }).toEqual({ field, offset: nativeLayout(layout.name, field) });
      }
    });
  }

  test("the library knows no struct or field it was not told about", () => {
    expect(nativeLayout("mlr_nothing")).toBe(-1);
    expect(nativeLayout("mlr_request", "nothing")).toBe(-1);
  });
});
