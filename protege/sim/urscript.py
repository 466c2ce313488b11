"""The few URScript statements the UR controller stand-in runs, parsed.

A program sent to the controller's port 30003 (``def prog(): ... end``, or single lines), and the
path that ``ur-rtde`` injects into its ``rtde_control`` script's ``exec_move_path()`` for
``moveL(path)`` / ``moveJ(path)``, are sequences of calls such as::

    movej([0, -1.57, 1.57, -1.57, -1.57, 0], a=1.4, v=1.05)
    movel(p[0.1, -0.5, 0.3, 0, 3.14, 0], a=1.2, v=0.25, r=0)
    set_standard_digital_out(3, True)

:func:`parse` turns them into :class:`Call` objects and refuses anything else (control flow,
variables, expressions, functions the stand-in does not run) with :class:`ScriptError`, which the
controller reports as the real one reports a compile error: the program does not start.
"""

from __future__ import annotations

import ast
import dataclasses
import re

import numpy as np

# function -> positional parameter names (URScript manual, e-Series 5.11), keyword defaults
FUNCTIONS = {
    "movej": (("q", "a", "v", "t", "r"), {"a": 1.4, "v": 1.05, "t": 0.0, "r": 0.0}),
    "movel": (("pose", "a", "v", "t", "r"), {"a": 1.2, "v": 0.25, "t": 0.0, "r": 0.0}),
    "stopj": (("a",), {}),
    "stopl": (("a", "aRot"), {"aRot": None}),
    "set_standard_digital_out": (("n", "b"), {}),
    "set_digital_out": (("n", "b"), {}),
    "set_tcp": (("pose",), {}),
    "textmsg": (("s1", "s2"), {"s2": ""}),
    "signal_async_progress": (("value",), {}),  # ur-rtde's path bookkeeping: no motion
}


class ScriptError(ValueError):
    """A program the stand-in cannot run; the message names the line."""


@dataclasses.dataclass
class Call:
    name: str
    args: dict
    line: int


def _value(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool, str)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _value(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v
    if isinstance(node, ast.List):
        values = [_value(e) for e in node.elts]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return np.array(values, float)
    raise ValueError("not a number, boolean, string or list of numbers")


def parse(text: str) -> list[Call]:
    """The calls of a program ``text``, in order (a ``def name(): ... end`` wrapper is unwrapped).

    Raises:
        ScriptError: a line that is not one call of :data:`FUNCTIONS` with literal arguments, or a
            call with missing, unknown or mistyped arguments.
    """
    lines = text.replace("\r", "").split("\n")
    calls = []
    body = [(i + 1, ln.split("#", 1)[0].strip()) for i, ln in enumerate(lines)]
    body = [(n, ln) for n, ln in body if ln]
    if body and re.fullmatch(r"(def|sec)\s+\w+\(\)\s*:", body[0][1]):
        if body[-1][1] != "end":
            raise ScriptError(f"line {body[0][0]}: {body[0][1]!r} has no closing 'end'")
        body = body[1:-1]
    for n, ln in body:
        src = re.sub(r"\bp\[", "[", ln)  # pose literals are lists here
        try:
            node = ast.parse(src, mode="eval").body
        except SyntaxError:
            raise ScriptError(f"line {n}: {ln[:80]!r} is not a call the stand-in runs") from None
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.func.id not in FUNCTIONS:
            raise ScriptError(f"line {n}: {ln[:80]!r} is not a call the stand-in runs "
                              f"(it runs {', '.join(sorted(FUNCTIONS))})")
        name = node.func.id
        params, defaults = FUNCTIONS[name]
        try:
            args = dict(zip(params, (_value(a) for a in node.args)))
            if len(node.args) > len(params):
                raise ValueError(f"{len(node.args)} arguments, at most {len(params)}")
            for kw in node.keywords:
                if kw.arg not in params or kw.arg in args:
                    raise ValueError(f"argument {kw.arg!r}")
                args[kw.arg] = _value(kw.value)
            missing = [p for p in params if p not in args and p not in defaults]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        except ValueError as e:
            raise ScriptError(f"line {n}: {name}: {e}") from None
        calls.append(Call(name, {**defaults, **args}, n))
    return calls


def path_of(script: str) -> list[Call] | None:
    """The calls that ``ur-rtde`` injected into its control script's ``exec_move_path()`` (None
    when the script has no such function).

    Raises:
        ScriptError: a path line the stand-in cannot run.
    """
    m = re.search(r"^(\s*)def exec_move_path\(\):\s*\n(.*?)^\1end\s*$", script, re.M | re.S)
    if m is None:
        return None
    return [c for c in parse(m.group(2)) if c.name not in ("textmsg", "signal_async_progress")]
