"""Derive a model's inputs JSON Schema from its source code, without running it.

The gateway validates every request against this schema before queueing, so it is read
statically (AST) from the partner's `predict` signature: partner code only ever runs in
its sandbox. The same reading covers Cog projects: `BasePredictor.predict` and
`BaseRunner.run`, `cog.Input(...)` constraints, `cog.Path`/`cog.Secret` and optional or
list types, with the outputs schema taken from the return annotation.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "dict": {"type": "object"},
    "Path": {"type": "string", "format": "uri"},
    "File": {"type": "string", "format": "uri"},
    "Secret": {"type": "string", "format": "password", "writeOnly": True, "x-cog-secret": True},
}
# Return types that the runner turns into files (engine outputs and PIL images).
_FILE_OUTPUTS = {"Path", "File", "Video", "Image"}
_ITERATORS = {"Iterator", "AsyncIterator", "Generator", "AsyncGenerator", "Iterable"}
_CONCATENATE = {"ConcatenateIterator", "AsyncConcatenateIterator"}
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
    "deprecated": "deprecated",
}
# Cog's BaseRunner names its method `run`; BasePredictor and engine.Model use `predict`.
METHODS = ("predict", "run")
_MAX_SOURCE = 4 * 1024 * 1024
_MAX_HOPS = 8


class SchemaError(ValueError):
    """The entrypoint's signature cannot be turned into a schema."""


class EntrypointNotFound(SchemaError):
    """The entrypoint's module, class or method does not exist."""


@dataclass(frozen=True)
class ModelSchemas:
    """What the entrypoint class exposes: the method the runner calls and its schemas."""

    method: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)


def _literal(node: ast.AST, where: str) -> Any:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise SchemaError(f"{where}: only literal values are allowed here") from exc
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{where}: {ast.unparse(node)!r} is not a JSON value") from exc
    return value


def _base_name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return getattr(node, "id", "")


def _union_members(node: ast.AST) -> list[ast.AST] | None:
    """The members of `X | Y` or `Union[X, Y]`, or None if the node is no union."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return (_union_members(node.left) or [node.left]) + (_union_members(node.right) or [node.right])
    if isinstance(node, ast.Subscript) and _base_name(node.value) == "Union":
        return list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
    return None


def _is_none(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and node.value is None) or (
        isinstance(node, ast.Name) and node.id == "None")


def _parse_string_annotation(node: ast.Constant, where: str) -> ast.AST:
    try:
        return ast.parse(node.value, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise SchemaError(f"{where}: unreadable annotation {node.value!r}") from exc


def _annotation(node: ast.AST | None, where: str) -> tuple[dict[str, Any], bool]:
    """JSON Schema for an annotation, and whether it admits None."""
    if node is None:
        raise SchemaError(f"{where}: every input needs a type annotation")
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _annotation(_parse_string_annotation(node, where), where)
    if isinstance(node, ast.Name) and node.id in _TYPES:
        return dict(_TYPES[node.id]), False
    if isinstance(node, ast.Attribute) and node.attr in _TYPES:  # cog.Path, pathlib.Path
        return dict(_TYPES[node.attr]), False
    members = _union_members(node)
    if members is not None:
        rest = [m for m in members if not _is_none(m)]
        if len(rest) == 1 and len(rest) < len(members):
            schema, _ = _annotation(rest[0], where)
            return schema, True
    if isinstance(node, ast.Subscript):
        base = _base_name(node.value)
        if base == "Optional":
            schema, _ = _annotation(node.slice, where)
            return schema, True
        if base in ("list", "List"):
            items, _ = _annotation(node.slice, where)
            return {"type": "array", "items": items}, False
        if base == "Literal":
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            values = [_literal(e, where) for e in elts]
            kinds = {type(v) for v in values}
            schema: dict[str, Any] = {"enum": values}
            if kinds <= {str}:
                schema["type"] = "string"
            elif kinds <= {int}:
                schema["type"] = "integer"
            return schema, False
    raise SchemaError(f"{where}: unsupported input type {ast.unparse(node)!r}")


def _is_input_call(node: ast.AST | None) -> bool:
    if not isinstance(node, ast.Call):
        return False
    return _base_name(node.func) == "Input"


def parse_source(source: str, what: str = "the entrypoint module") -> ast.Module:
    """Parse partner source, turning every way it can fail into a SchemaError."""
    if len(source) > _MAX_SOURCE:
        raise SchemaError(f"{what} is too large to read ({len(source)} characters)")
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise SchemaError(f"{what} does not parse: {exc}") from exc


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _find_method(
    tree: ast.Module, class_name: str, methods: tuple[str, ...]
) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The first of `methods` that `class_name` defines, walking its bases in this module."""
    classes = _classes(tree)
    if class_name not in classes:
        raise EntrypointNotFound(f"no class {class_name} in the entrypoint module")
    for method in methods:
        seen: set[str] = set()
        queue = [class_name]
        while queue:
            name = queue.pop(0)
            if name in seen or name not in classes:
                continue
            seen.add(name)
            for item in classes[name].body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == method:
                    return item
            queue.extend(_base_name(base) for base in classes[name].bases)
    return None


def _method(tree: ast.Module, class_name: str, method: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    found = _find_method(tree, class_name, (method,))
    if found is None:
        raise EntrypointNotFound(f"class {class_name} has no {method}() method")
    return found


def _signature_schema(fn: ast.FunctionDef | ast.AsyncFunctionDef, class_name: str) -> dict[str, Any]:
    method = fn.name
    if fn.args.vararg or fn.args.kwarg:
        raise SchemaError(f"{class_name}.{method}() must list its inputs; *args/**kwargs are not allowed")
    args = list(fn.args.posonlyargs) + list(fn.args.args)
    args = args[1:]  # self
    positional_defaults = list(fn.args.defaults)
    defaults: list[ast.AST | None] = [None] * (len(args) - len(positional_defaults)) + positional_defaults
    args += fn.args.kwonlyargs
    defaults += list(fn.args.kw_defaults)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for order, (arg, default) in enumerate(zip(args, defaults, strict=True)):
        where = f"{class_name}.{method}({arg.arg})"
        schema, nullable = _annotation(arg.annotation, where)
        schema["x-order"] = order
        has_default = False
        default_value: Any = None
        if _is_input_call(default):
            call = default
            assert isinstance(call, ast.Call)
            default_node = call.args[0] if call.args else None
            for kw in call.keywords:
                if kw.arg == "default":
                    default_node = kw.value
                elif kw.arg in _INPUT_KEYWORDS:
                    schema[_INPUT_KEYWORDS[kw.arg]] = _literal(kw.value, where)
            if default_node is not None and not (
                    isinstance(default_node, ast.Constant) and default_node.value is Ellipsis):
                default_value = _literal(default_node, where)
                has_default = True
        elif default is not None:
            default_value = _literal(default, where)
            has_default = True
        if "pattern" in schema:
            try:
                re.compile(schema["pattern"])
            except (re.error, TypeError, RecursionError) as exc:
                raise SchemaError(f"{where}: regex {schema['pattern']!r} does not compile") from exc
        if has_default and default_value is None:
            # Cog's rule: an explicit None default makes the input optional.
            nullable = True
        elif has_default:
            schema["default"] = default_value
        if nullable:
            schema = {"anyOf": [schema, {"type": "null"}], **{k: schema.pop(k) for k in list(schema)
                      if k in ("default", "description", "x-order", "deprecated")}}
            has_default = True
            schema.setdefault("default", None)
        schema["title"] = arg.arg.replace("_", " ").capitalize()
        properties[arg.arg] = schema
        if not has_default:
            required.append(arg.arg)
    return {
        "type": "object",
        "title": "Input",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def inputs_schema(source: str, class_name: str, method: str = "predict") -> dict[str, Any]:
    """The JSON Schema of `class_name.method`'s keyword inputs, read from `source`."""
    tree = parse_source(source)
    return _signature_schema(_method(tree, class_name, method), class_name)


def _output(node: ast.AST | None, classes: dict[str, ast.ClassDef], depth: int = 0) -> dict[str, Any]:
    """Best-effort JSON Schema of a return annotation; unknown types admit anything."""
    if node is None or depth > 8:
        return {}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return _output(_parse_string_annotation(node, "output"), classes, depth + 1)
        except SchemaError:
            return {}
    name = _base_name(node)
    if isinstance(node, ast.Name | ast.Attribute):
        if name in _FILE_OUTPUTS:
            return {"type": "string", "format": "uri"}
        if name in _TYPES:
            return dict(_TYPES[name])
        if name in classes:  # a cog BaseModel output object
            properties: dict[str, Any] = {}
            for item in classes[name].body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    properties[item.target.id] = {
                        **_output(item.annotation, classes, depth + 1),
                        "title": item.target.id.replace("_", " ").capitalize(),
                    }
            return {"type": "object", "properties": properties}
        return {}
    members = _union_members(node)
    if members is not None:
        rest = [m for m in members if not _is_none(m)]
        if len(rest) == 1:
            return {"anyOf": [_output(rest[0], classes, depth + 1), {"type": "null"}]}
        return {}
    if isinstance(node, ast.Subscript):
        inner = node.slice.elts[0] if isinstance(node.slice, ast.Tuple) and node.slice.elts else node.slice
        base = _base_name(node.value)
        if base in ("list", "List"):
            return {"type": "array", "items": _output(inner, classes, depth + 1)}
        if base == "Optional":
            return {"anyOf": [_output(inner, classes, depth + 1), {"type": "null"}]}
        if base in _ITERATORS:
            return {"type": "array", "items": _output(inner, classes, depth + 1),
                    "x-cog-array-type": "iterator"}
        if base in _CONCATENATE:
            return {"type": "array", "items": _output(inner, classes, depth + 1),
                    "x-cog-array-type": "iterator", "x-cog-array-display": "concatenate"}
        if base in ("dict", "Dict"):
            return {"type": "object"}
    return {}


def outputs_schema(source: str, class_name: str, method: str = "predict") -> dict[str, Any]:
    """The JSON Schema of what `class_name.method` returns, from its return annotation."""
    tree = parse_source(source)
    fn = _method(tree, class_name, method)
    return {**_output(fn.returns, _classes(tree)), "title": "Output"}


def _reexport(tree: ast.Module, module: str, is_package: bool, class_name: str) -> str | None:
    """The module that a top-level `from X import Class` in `module` takes `class_name` from."""
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        if not any(a.name == class_name and a.asname in (None, class_name) for a in node.names):
            continue
        if node.level == 0:
            return node.module
        package = module.split(".") if is_package else module.split(".")[:-1]
        if node.level - 1 > len(package) or (node.level - 1 == len(package) and not node.module):
            return None
        base = package[: len(package) - (node.level - 1)]
        return ".".join([*base, *([node.module] if node.module else [])]) or None
    return None


def model_schemas(
    load_module: Callable[[str], tuple[str, bool] | None],
    module: str,
    class_name: str,
    methods: tuple[str, ...] = METHODS,
) -> ModelSchemas:
    """Read the schemas of `module:class_name`, following `from x import Class` re-exports.

    `load_module(dotted_name)` returns `(source, is_package)` or None when the module is
    not in the package; `methods` are tried in order (Cog tries `run` before `predict`).
    """
    for _ in range(_MAX_HOPS):
        loaded = load_module(module)
        if loaded is None:
            raise EntrypointNotFound(f"module {module!r} is not in the package")
        source, is_package = loaded
        tree = parse_source(source, f"module {module!r}")
        if class_name not in _classes(tree):
            origin = _reexport(tree, module, is_package, class_name)
            if origin is None:
                raise EntrypointNotFound(f"no class {class_name} in module {module!r}")
            module = origin
            continue
        fn = _find_method(tree, class_name, methods)
        if fn is None:
            raise EntrypointNotFound(
                f"class {class_name} has no {' or '.join(m + '()' for m in methods)} method")
        return ModelSchemas(
            method=fn.name,
            inputs=_signature_schema(fn, class_name),
            outputs={**_output(fn.returns, _classes(tree)), "title": "Output"},
        )
    raise SchemaError(f"{class_name} is re-exported through too many modules")
