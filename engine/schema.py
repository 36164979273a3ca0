"""Derive a model's inputs JSON Schema from its source code, without running it.

The gateway validates every request against this schema before queueing, so it is read
statically (AST) from the partner's `predict` signature: partner code only ever runs in
its sandbox.
"""

from __future__ import annotations

import ast
from typing import Any

_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "dict": {"type": "object"},
    "Path": {"type": "string", "format": "uri"},
    "File": {"type": "string", "format": "uri"},
}
_INPUT_KEYWORDS = {
    "description": "description",
    "ge": "minimum",
    "le": "maximum",
    "gt": "exclusiveMinimum",
    "lt": "exclusiveMaximum",
    "min_length": "minLength",
    "max_length": "maxLength",
    "choices": "enum",
    "regex": "pattern",
}


class SchemaError(ValueError):
    """The entrypoint's signature cannot be turned into a schema."""


def _literal(node: ast.AST, where: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError) as exc:
        raise SchemaError(f"{where}: only literal values are allowed here") from exc


def _annotation(node: ast.AST | None, where: str) -> tuple[dict[str, Any], bool]:
    """JSON Schema for an annotation, and whether it admits None."""
    if node is None:
        raise SchemaError(f"{where}: every input needs a type annotation")
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _annotation(ast.parse(node.value, mode="eval").body, where)
    if isinstance(node, ast.Name) and node.id in _TYPES:
        return dict(_TYPES[node.id]), False
    if isinstance(node, ast.Attribute) and node.attr in _TYPES:  # cog.Path, pathlib.Path
        return dict(_TYPES[node.attr]), False
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | None
        for a, b in ((node.left, node.right), (node.right, node.left)):
            if isinstance(b, ast.Constant) and b.value is None:
                schema, _ = _annotation(a, where)
                return schema, True
    if isinstance(node, ast.Subscript):
        base = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        if base == "Optional":
            schema, _ = _annotation(node.slice, where)
            return schema, True
        if base in ("list", "List"):
            items, _ = _annotation(node.slice, where)
            return {"type": "array", "items": items}, False
    raise SchemaError(f"{where}: unsupported input type {ast.unparse(node)!r}")


def _is_input_call(node: ast.AST | None) -> bool:
    if not isinstance(node, ast.Call):
        return False
    fn = node.func
    name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
    return name == "Input"


def _method(tree: ast.Module, class_name: str, method: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == method:
                    return item
            raise SchemaError(f"class {class_name} has no {method}() method")
    raise SchemaError(f"no class {class_name} in the entrypoint module")


def inputs_schema(source: str, class_name: str, method: str = "predict") -> dict[str, Any]:
    """The JSON Schema of `class_name.method`'s keyword inputs, read from `source`."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise SchemaError(f"the entrypoint module does not parse: {exc}") from exc
    fn = _method(tree, class_name, method)
    args = fn.args.args[1:]  # self
    defaults: list[ast.AST | None] = [None] * (len(args) - len(fn.args.defaults)) + list(fn.args.defaults)
    args += fn.args.kwonlyargs
    defaults += list(fn.args.kw_defaults)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for order, (arg, default) in enumerate(zip(args, defaults, strict=True)):
        where = f"{class_name}.{method}({arg.arg})"
        schema, nullable = _annotation(arg.annotation, where)
        schema["x-order"] = order
        has_default = False
        if _is_input_call(default):
            call = default
            assert isinstance(call, ast.Call)
            if call.args:
                schema["default"] = _literal(call.args[0], where)
                has_default = True
            for kw in call.keywords:
                if kw.arg == "default":
                    schema["default"] = _literal(kw.value, where)
                    has_default = True
                elif kw.arg in _INPUT_KEYWORDS:
                    schema[_INPUT_KEYWORDS[kw.arg]] = _literal(kw.value, where)
        elif default is not None:
            schema["default"] = _literal(default, where)
            has_default = True
        if nullable:
            schema = {"anyOf": [schema, {"type": "null"}], **{k: schema.pop(k) for k in list(schema)
                      if k in ("default", "description", "x-order")}}
            has_default = has_default or True
            schema.setdefault("default", None)
        schema["title"] = arg.arg.replace("_", " ").capitalize()
        properties[arg.arg] = schema
        if not has_default:
            required.append(arg.arg)
    if fn.args.vararg or fn.args.kwarg:
        raise SchemaError(f"{class_name}.{method}() must list its inputs; *args/**kwargs are not allowed")
    return {
        "type": "object",
        "title": "Input",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
