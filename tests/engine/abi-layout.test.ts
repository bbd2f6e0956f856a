import { describe, expect, test } from "bun:test";
import {
  ABI_STRUCTS,
  MLR_DTYPE,
  MLR_FINISH,
  MLR_STATUS,
  nativeEnumName,
  nativeLayout,
} from "../../src/engine/native.ts";
import { MODULE_IDS } from "../../src/formats/lora-modules.ts";

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

/** Every constant of a C enum, by name, as the library names them (values swept well past the last). */
function nativeEnum(enumName: string): Record<string, number> {
  const constants: Record<string, number> = {};
  for (let value = -16; value < 512; value++) {
    const name = nativeEnumName(enumName, value);
    if (name !== undefined) constants[name] = value;
  }
  return constants;
}

/** A TypeScript table as C's constant names: { OK: 0 } with prefix "MLR_" -> { MLR_OK: 0 }. */
function asC(table: Record<string, number>, prefix: string): Record<string, number> {
  return Object.fromEntries(Object.entries(table).map(([k, v]) => [`${prefix}${k.toUpperCase()}`, v]));
}

describe("the ABI enums: TypeScript's tables hold exactly C's constants, with C's values", () => {
  test("mlr_status = MLR_STATUS (src/engine/native.ts)", () => {
    expect(asC(MLR_STATUS, "MLR_")).toEqual(nativeEnum("mlr_status"));
  });

  test("mlr_finish = MLR_FINISH (src/engine/native.ts)", () => {
    expect(asC(MLR_FINISH, "MLR_FINISH_")).toEqual(nativeEnum("mlr_finish"));
  });

  test("mlr_float_dtype = MLR_DTYPE (src/engine/native.ts)", () => {
    expect(asC(MLR_DTYPE, "MLR_DTYPE_")).toEqual(nativeEnum("mlr_float_dtype"));
  });

  test("mlr_lora_module = MODULE_IDS (src/formats/lora-modules.ts)", () => {
    expect(asC(MODULE_IDS, "MLR_LORA_")).toEqual(nativeEnum("mlr_lora_module"));
  });

  test("an unknown enum or value has no name", () => {
    expect(nativeEnumName("mlr_nothing", 0)).toBeUndefined();
    expect(nativeEnumName("mlr_status", 10)).toBeUndefined();
    expect(nativeEnumName("mlr_status", -1)).toBeUndefined();
  });
});
