"""A compiled XLA module's text, indexed: each instruction's opcode(s) and, for dots, their
FLOPs and least bytes from the shapes (`profile_update.py` matches profiled operations to
it). No flags, so tests import it.
"""

from __future__ import annotations

import math
import re

_CONTROL = {"while", "conditional", "call"}  # their bodies' operations are events of their own


def hlo_index(hlo: str) -> dict[str, dict]:
  """Instruction name -> {"op": opcode, "ops": opcodes inside it (a fusion's body, else
  its own), "flops": its dots' FLOPs} for every instruction of a compiled module's text."""
  comps, cur = {}, None
  instr, types = {}, {}
  for line in hlo.splitlines():
    head = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->.*\{\s*$", line)
    if head:
      cur = comps.setdefault(head.group(1), {"ops": set(), "flops": 0.0, "bytes": 0.0})
      continue
    m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$", line)
    if not m or cur is None:
      continue
    name, out_type, op, rest = m.groups()
    types[name] = out_type
    dot = op in ("dot", "convolution")
    flops = _dot_flops(out_type, rest, types) if dot else 0.0
    moved = _dot_bytes(out_type, rest, types) if dot else 0.0
    calls = re.search(r"calls=%?([\w.\-]+)", rest)
    instr[name] = {"op": op, "calls": calls.group(1) if calls else None, "flops": flops,
                   "bytes": moved}
    cur["ops"].add(op)
    cur["flops"] += flops
    cur["bytes"] += moved
  out = {}
  for name, d in instr.items():
    body = comps.get(d["calls"]) if d["calls"] and d["op"] not in _CONTROL else None
    out[name] = {"op": d["op"], "ops": body["ops"] if body else {d["op"]},
                 "flops": body["flops"] if body else d["flops"],
                 "bytes": body["bytes"] if body else d["bytes"]}
  return out


def _dims(type_text: str) -> list[int]:
  m = re.match(r"\s*\w+\[([\d,]*)\]", type_text)
  return [int(x) for x in m.group(1).split(",") if x] if m else []


def _dot_flops(out_type: str, rest: str, types: dict) -> float:
  """2 x output elements x contracted size, from a dot's text and its operands' types."""
  first = re.match(r"\s*%?([\w.\-]+)", rest)
  lhs = _dims(types.get(first.group(1), "")) if first else []
  contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
  if not lhs or not contracting:
    return 0.0
  k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i)
  return 2.0 * math.prod(_dims(out_type)) * k


_ITEM_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "s8": 1, "u8": 1, "pred": 1}


def _bytes(type_text: str) -> float:
  m = re.match(r"\s*(\w+)\[", type_text)
  return math.prod(_dims(type_text)) * _ITEM_BYTES.get(m.group(1), 4) if m else 0.0


def _dot_bytes(out_type: str, rest: str, types: dict) -> float:
  """The least bytes a dot moves: its two operands read, its output written."""
  names = re.findall(r"%([\w.\-]+)", rest.split(")")[0])[:2]
  return sum(_bytes(types.get(n, "")) for n in names) + _bytes(out_type)


def op_class(ops: set[str]) -> str:
  if ops & {"dot", "convolution"}:
    return "matmul"
  if ops & _CONTROL:
    return "control"
  if ops & {"gather", "scatter", "dynamic-slice", "dynamic-update-slice", "slice", "pad",
            "concatenate", "select-and-scatter"}:
    return "gather/scatter/slice"
  if ops & {"reduce", "reduce-window", "all-reduce", "sort"}:
    return "reduce"
  if ops <= {"copy", "transpose", "bitcast", "parameter", "tuple", "get-tuple-element",
             "broadcast", "reshape", "constant"}:
    return "copy/transpose"
  return "elementwise"


