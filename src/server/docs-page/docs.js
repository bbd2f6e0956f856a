// The /docs page's script: fetches /openapi.json and renders every operation (method, path, summary,
// description, parameters, request body fields with their types, responses and error codes). Plain
// browser JavaScript with no dependencies and no network access beyond this server; text is always set
// with textContent, never parsed as HTML.

const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/** An element with a class and children (strings become text nodes). */
function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

/** Text with `code` spans and blank-line paragraphs, as the document's descriptions are written. */
function prose(text, className) {
  const box = el("div", className || "prose");
  for (const para of String(text)
    .trim()
    .split(/\n\s*\n/)) {
    const p = el("p");
    String(para)
      .split(/(`[^`]+`)/)
      .forEach((part) => {
        if (part.startsWith("`") && part.endsWith("`") && part.length > 1)
          p.append(el("code", "", part.slice(1, -1)));
        else if (part) p.append(document.createTextNode(part.replace(/\s*\n\s*/g, " ")));
      });
    box.append(p);
  }
  return box;
}

/** The variants of a union (anyOf / oneOf), flattened; `null` is reported apart as nullable. */
function variants(schema) {
  const list = schema.anyOf || schema.oneOf;
  if (!list) return [schema];
  return list.flatMap((s) => variants(s));
}

/** A short type expression: `string`, `integer[]`, `"auto" | "always"`, `object`, with `| null`. */
function typeOf(schema) {
  if (!schema || typeof schema !== "object") return "any";
  if (schema.anyOf || schema.oneOf) {
    const names = [...new Set(variants(schema).map((s) => typeOf(s)))];
    return names.join(" | ");
  }
  if ("const" in schema) return JSON.stringify(schema.const);
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
  if (type === "array") {
    const item = typeOf(schema.items);
    return item.includes(" ") ? `(${item})[]` : `${item}[]`;
  }
  if (type) return schema.format ? `${type} (${schema.format})` : type;
  if (schema.properties) return "object";
  return "any";
}

/** Limits of a value, as short text: `1..16`, `> 0`, `≤ 16 items`. */
function constraints(schema) {
  const out = [];
  for (const s of variants(schema)) {
    const parts = [];
    const low =
      s.minimum !== undefined
        ? `≥ ${s.minimum}`
        : s.exclusiveMinimum !== undefined
          ? `> ${s.exclusiveMinimum}`
          : "";
    const high =
      s.maximum !== undefined
        ? `≤ ${s.maximum}`
        : s.exclusiveMaximum !== undefined
          ? `< ${s.exclusiveMaximum}`
          : "";
    if (low) parts.push(low);
    if (high) parts.push(high);
    if (s.minLength !== undefined) parts.push(`length ≥ ${s.minLength}`);
    if (s.maxLength !== undefined) parts.push(`length ≤ ${s.maxLength}`);
    if (s.minItems !== undefined) parts.push(`≥ ${s.minItems} items`);
    if (s.maxItems !== undefined) parts.push(`≤ ${s.maxItems} items`);
    if (s.pattern) parts.push(`pattern ${s.pattern}`);
    if (parts.length) out.push(parts.join(", "));
  }
  return [...new Set(out)].join("; ");
}

/** The object schemas a field leads to (itself, its array items, its union variants), for nested rows. */
function nestedObjects(schema) {
  const found = [];
  for (const s of variants(schema)) {
    if (s.properties) found.push(s);
    else if (s.type === "array" && s.items) found.push(...nestedObjects(s.items));
  }
  return found;
}

/** Rows of a fields table for an object schema, nested fields indented under their parent. */
function fieldRows(schema, prefix, depth, rows) {
  const required = new Set(schema.required || []);
  for (const [name, field] of Object.entries(schema.properties || {})) {
    const nullable = variants(field).some((s) => s.type === "null");
    const row = el("tr");
    const nameCell = el("td", "field", el("code", "", prefix + name));
    nameCell.style.paddingLeft = `${0.5 + depth * 1.25}rem`;
    if (required.has(name)) nameCell.append(el("span", "required", "required"));
    row.append(nameCell);
    const type = typeOf(field)
      .split(" | ")
      .filter((t) => t !== "null")
      .join(" | ");
    row.append(
      el("td", "type", el("code", "", type || "null"), nullable ? el("span", "muted", " or null") : ""),
    );
    const notes = el("td", "notes");
    if (field.description) notes.append(prose(field.description, "prose inline"));
    const limits = constraints(field);
    if (limits) notes.append(el("div", "muted", limits));
    if (field.default !== undefined)
      notes.append(el("div", "muted", "default ", el("code", "", JSON.stringify(field.default))));
    row.append(notes);
    rows.push(row);
    if (depth < 4) {
      const objects = nestedObjects(field);
      const isArray = variants(field).some((s) => s.type === "array");
      objects.forEach((o, i) => {
        const label =
          objects.length > 1
            ? `${prefix}${name}${isArray ? "[]" : ""}〈${i + 1}〉.`
            : `${prefix}${name}${isArray ? "[]" : ""}.`;
        fieldRows(o, label, depth + 1, rows);
      });
    }
  }
  return rows;
}

/** A schema: a fields table for an object, else its type. */
function schemaView(schema) {
  if (!schema) return el("p", "muted", "No schema.");
  const objects = variants(schema).filter((s) => s.properties);
  if (!objects.length) return el("p", "", "Type: ", el("code", "", typeOf(schema)));
  const box = el("div");
  objects.forEach((o, i) => {
    if (objects.length > 1) box.append(el("p", "muted", `One of ${objects.length}: variant ${i + 1}`));
    const rows = fieldRows(o, "", 0, []);
    const table = el(
      "table",
      "fields",
      el("thead", "", el("tr", "", el("th", "", "Field"), el("th", "", "Type"), el("th", "", "Notes"))),
    );
    table.append(el("tbody", "", ...rows));
    box.append(rows.length ? table : el("p", "muted", "An object with no fixed fields."));
  });
  return box;
}

/** The content of a body: its media types, and the JSON one's schema (or the first's). */
function contentView(content) {
  const types = Object.keys(content || {});
  if (!types.length) return el("p", "muted", "No body.");
  const box = el("div");
  box.append(
    el("p", "media", "Content types: ", ...types.flatMap((t, i) => [i ? ", " : "", el("code", "", t)])),
  );
  const main = content["application/json"] || content[types[0]];
  box.append(schemaView(main.schema));
  if (main.example !== undefined) {
    box.append(el("h5", "", "Example"), el("pre", "example", JSON.stringify(main.example, null, 2)));
  }
  return box;
}

function operationView(path, method, op, globalSecurity) {
  const id = op.operationId || `${method}-${path}`;
  const section = el("section", "operation");
  section.id = id;
  const head = el(
    "h3",
    "",
    el("span", `method ${method}`, method.toUpperCase()),
    " ",
    el("code", "path", path),
  );
  section.append(head);
  if (op.summary) section.append(el("p", "summary", op.summary));
  const security = op.security || globalSecurity || [];
  section.append(
    el(
      "p",
      "muted",
      op.operationId ? `operationId ${op.operationId} · ` : "",
      security.length ? "API key: Authorization: Bearer <key> when the server has keys" : "No API key needed",
    ),
  );
  if (op.description) section.append(prose(op.description));

  const params = op.parameters || [];
  if (params.length) {
    section.append(el("h4", "", "Parameters"));
    const table = el(
      "table",
      "fields",
      el(
        "thead",
        "",
        el("tr", "", el("th", "", "Name"), el("th", "", "In"), el("th", "", "Type"), el("th", "", "Notes")),
      ),
    );
    table.append(
      el(
        "tbody",
        "",
        ...params.map((p) =>
          el(
            "tr",
            "",
            el("td", "field", el("code", "", p.name), p.required ? el("span", "required", "required") : ""),
            el("td", "", p.in),
            el("td", "type", el("code", "", typeOf(p.schema))),
            el("td", "notes", p.description ? prose(p.description, "prose inline") : ""),
          ),
        ),
      ),
    );
    section.append(table);
  }

  if (op.requestBody) {
    section.append(
      el(
        "h4",
        "",
        "Request body",
        op.requestBody.required ? el("span", "required", "required") : el("span", "muted", " (optional)"),
      ),
    );
    section.append(contentView(op.requestBody.content));
  }

  section.append(el("h4", "", "Responses"));
  const list = el("div", "responses");
  for (const [code, response] of Object.entries(op.responses || {})) {
    const kind = code.startsWith("2") ? "ok" : code.startsWith("5") ? "server-error" : "error";
    const details = el("details", `response ${kind}`);
    details.append(el("summary", "", el("span", `status ${kind}`, code), " ", response.description || ""));
    details.append(contentView(response.content));
    list.append(details);
  }
  section.append(list);
  return section;
}

function render(doc) {
  const root = document.getElementById("app");
  root.textContent = "";
  const info = doc.info || {};
  document.title = `${info.title || "API"} ${info.version || ""} · API reference`;
  const header = el(
    "header",
    "",
    el("h1", "", info.title || "API", " ", el("span", "version", info.version || "")),
  );
  if (info.description) header.append(prose(info.description));
  header.append(el("p", "muted", "From ", el("a", "", "/openapi.json"), ` (OpenAPI ${doc.openapi || ""}).`));
  header.querySelector("a").href = "/openapi.json";

  // Operations grouped by their first tag, in the order the tags first appear.
  const groups = new Map();
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const tag = op.tags?.[0] || "Other";
      if (!groups.has(tag)) groups.set(tag, []);
      const parameters = [...(item.parameters || []), ...(op.parameters || [])];
      // Path parameters the document does not declare are still shown, from the path's {name}s.
      for (const [, name] of path.matchAll(/\{([^}]+)\}/g)) {
        if (!parameters.some((p) => p.in === "path" && p.name === name)) {
          parameters.push({ name, in: "path", required: true, schema: { type: "string" } });
        }
      }
      groups.get(tag).push({ path, method, op: { ...op, parameters } });
    }
  }

  const nav = el("nav", "");
  const main = el("main", "");
  for (const [tag, ops] of groups) {
    const tagId = `tag-${tag.replace(/[^A-Za-z0-9]+/g, "-")}`;
    const navLink = el("a", "tag", tag);
    navLink.href = `#${tagId}`;
    const navList = el("ul", "");
    const section = el("section", "tag-group");
    section.id = tagId;
    section.append(el("h2", "", tag));
    for (const { path, method, op } of ops) {
      const view = operationView(path, method, op, doc.security);
      const link = el("a", "", el("span", `method ${method}`, method.toUpperCase()), " ", op.summary || path);
      link.href = `#${view.id}`;
      navList.append(el("li", "", link));
      section.append(view);
    }
    nav.append(navLink, navList);
    main.append(section);
  }
  root.append(nav, el("div", "content", header, main));
  if (location.hash) document.getElementById(decodeURIComponent(location.hash.slice(1)))?.scrollIntoView();
}

fetch("/openapi.json")
  .then((r) => {
    if (!r.ok) throw new Error(`GET /openapi.json answered ${r.status}`);
    return r.json();
  })
  .then(render)
  .catch((e) => {
    const root = document.getElementById("app");
    root.textContent = "";
    root.append(el("p", "failed", `Could not load the API document: ${e.message}`));
  });
