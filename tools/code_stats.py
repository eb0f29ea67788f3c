"""Lines per module and the longest functions of the flaxlstm package, at any git revision.

  python tools/code_stats.py              # the working tree
  python tools/code_stats.py --rev HEAD~3  # a revision, read with `git show` (no checkout)

Lines are physical lines of each `.py` file; a function's length runs from its `def` to its
last line (nested functions count inside their parent and on their own).
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _files(rev: str | None) -> dict[str, str]:
  if rev is None:
    return {
      str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "flaxlstm").rglob("*.py"))
    }
  names = subprocess.run(
    ["git", "ls-tree", "-r", "--name-only", rev, "flaxlstm"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  ).stdout.split()
  return {
    n: subprocess.run(
      ["git", "show", f"{rev}:{n}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for n in sorted(names)
    if n.endswith(".py")
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rev", default=None, help="git revision (default: the working tree)")
  parser.add_argument("--top", type=int, default=10, help="longest functions to list")
  args = parser.parse_args()
  files = _files(args.rev)
  functions = []
  print("| module | lines |\n|---|---:|")
  for name, text in files.items():
    print(f"| {name} | {len(text.splitlines())} |")
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        functions.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
  print(f"| **total ({len(files)} files)** | {sum(len(t.splitlines()) for t in files.values())} |")
  print("\n| longest functions | lines |\n|---|---:|")
  for length, where in sorted(functions, reverse=True)[: args.top]:
    print(f"| {where} | {length} |")


if __name__ == "__main__":
  main()
