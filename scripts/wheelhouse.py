"""A wheelhouse for installing nnunet-transfer on a machine without internet (a GPU node, an air-gapped cluster).

Run it on a machine with internet and this repository; copy OUT to the target; there:

    pip install --no-index --find-links OUT -r OUT/requirements.txt

    python scripts/wheelhouse.py OUT --python-version 3.12 --platform manylinux_2_28_x86_64 \\
        [--exclude-from target-freeze.txt] [--exclude NAME ...] [--extra onnx]

Wheels for the target's Python and platform (every ``--platform`` tag given is accepted, with pip's usual
compatibility: ``manylinux_2_28`` also takes ``manylinux2014`` wheels). torch and torchvision, and everything only they
need, are left out (the target installs PyTorch its own way, for its CUDA), and so is every distribution named in
``--exclude-from`` (a ``pip freeze`` of the target environment, or a list of names) or ``--exclude``; what only those
need is left out too. A dependency published only as a source distribution is built into a wheel here, and accepted
only when that wheel is pure Python (``py3-none-any``). Nothing but the standard library and pip is needed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALWAYS_EXCLUDED = ("torch", "torchvision")  # the target installs PyTorch for its CUDA; what only they need goes too
_NOT_FOUND = re.compile(r"(?:Could not find a version that satisfies the requirement|"
                        r"No matching distribution found for) ([^\s(]+)")
_CONFLICT = re.compile(r"^\s*\S+ \S+ depends on (.+)$", re.M)  # "nnunetv2 2.8.1 depends on acvl-utils<0.3 and >=0.2.6"


def _missing_requirement(stderr: str) -> str | None:
    """The requirement the target has no wheel for, from pip's error: not found, or a conflict it implies."""
    match = _NOT_FOUND.search(stderr)
    if match:
        return match.group(1)
    conflicts = _CONFLICT.findall(stderr)
    return conflicts[-1].strip().replace(" and ", ",") if conflicts else None


def canonical(name: str) -> str:
    """PEP 503 normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_excluded(path: Path) -> set[str]:
    """Names from a ``pip freeze`` output or a list of names (comments, editable and URL lines understood)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        names.add(canonical(re.split(r"[\s=<>!~;@\[]", line, maxsplit=1)[0]))
    return names


def _pip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"wheelhouse: {' '.join(cmd[3:6])} ... failed:\n{proc.stderr[-3000:]}")
    return proc


_MANYLINUX = re.compile(r"^manylinux_2_(\d+)_(\w+)$")
_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def expand_platforms(platforms: list[str]) -> list[str]:
    """Every tag a target with these platforms accepts: ``manylinux_2_28_x86_64`` also takes the older glibc
    versions and their legacy names (``manylinux2014_x86_64``...), as pip does for the running system but not for
    ``--platform``."""
    out: list[str] = []
    for platform in platforms:
        match = _MANYLINUX.match(platform)
        tags = [platform]
        if match:
            glibc, arch = int(match.group(1)), match.group(2)
            for minor in range(glibc, 4, -1):
                tags.append(f"manylinux_2_{minor}_{arch}")
                if minor in _LEGACY and (minor != 5 or arch in ("x86_64", "i686")):
                    tags.append(f"{_LEGACY[minor]}_{arch}")
        out += [t for t in dict.fromkeys(tags) if t not in out]
    return out


def _target_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", args.python_version, "--implementation", "cp"]
    for platform in expand_platforms(args.platform):
        flags += ["--platform", platform]
    return flags


def _marker_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment markers of the target (for the requirements between the resolved distributions)."""
    machine = "aarch64" if any("aarch64" in p for p in args.platform) else "x86_64"
    return {"python_version": ".".join(args.python_version.split(".")[:2]), "python_full_version":
            args.python_version if args.python_version.count(".") == 2 else args.python_version + ".0",
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": machine,
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def _requirement_tools():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always carries it
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def resolve(root_spec: str, out: Path, args: argparse.Namespace) -> list[dict]:
    """Resolve ``root_spec`` for the target; sdist-only dependencies are built into pure wheels in ``out`` first."""
    built: set[str] = set()
    for _ in range(30):
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.json"
            proc = _pip("install", "--dry-run", "--ignore-installed", "--report", str(report),
                        "--target", str(Path(tmp) / "target"), "--find-links", str(out), *_target_flags(args),
                        root_spec, check=False)
            if proc.returncode == 0:
                return json.loads(report.read_text())["install"]
        requirement = _missing_requirement(proc.stdout + proc.stderr)
        if requirement is None or requirement in built:
            raise SystemExit(f"wheelhouse: cannot resolve {root_spec} for Python {args.python_version} on "
                             f"{', '.join(args.platform)}:\n{proc.stderr[-3000:]}")
        built.add(requirement)
        before = set(out.glob("*.whl"))
        print(f"  {requirement}: no wheel for the target; building one from its source distribution", flush=True)
        name = canonical(_requirement_tools()(requirement).name)
        _pip("wheel", "--no-deps", "--quiet", "--no-binary", name, "-w", str(out), requirement)
        for wheel in set(out.glob("*.whl")) - before:
            if not wheel.name.endswith("-py3-none-any.whl") and not wheel.name.endswith("-py2.py3-none-any.whl"):
                wheel.unlink()
                raise SystemExit(f"wheelhouse: {requirement} builds a platform-specific wheel ({wheel.name}); "
                                 "build it on a machine like the target and add it to the folder")
    raise SystemExit("wheelhouse: too many source-only dependencies")


def needed(items: list[dict], root: str, excluded: set[str], env: dict[str, str], extras: list[str]) -> list[dict]:
    """The resolved distributions reachable from ``root`` without passing through an excluded one."""
    requirement_class = _requirement_tools()
    by_name = {canonical(i["metadata"]["name"]): i for i in items}
    keep: set[str] = set()
    todo = [(canonical(root), tuple(extras))]
    while todo:
        name, with_extras = todo.pop()
        if name in keep or name in excluded or name not in by_name:
            continue
        keep.add(name)
        for text in by_name[name]["metadata"].get("requires_dist") or []:
            req = requirement_class(text)
            if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e})
                                                  for e in ("", *with_extras)):
                continue
            todo.append((canonical(req.name), tuple(req.extras)))
    return [by_name[n] for n in sorted(keep)]


def build_parser() -> argparse.ArgumentParser:
    """The script's options (``tests/unit/test_docs.py`` checks the flags the docs show against them)."""
    parser = argparse.ArgumentParser(prog="scripts/wheelhouse.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the wheelhouse folder (created; wheels already there are kept)")
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                        help="the target's Python, e.g. 3.12 (default: this one)")
    parser.add_argument("--platform", action="append", default=None,
                        help="the target's platform tag, repeatable (default manylinux_2_28_x86_64)")
    parser.add_argument("--exclude-from", type=Path, action="append", default=[],
                        help="a pip freeze of the target environment (or names, one a line): left out")
    parser.add_argument("--exclude", action="append", default=[], help="a distribution to leave out, repeatable")
    parser.add_argument("--extra", action="append", default=[], help="an extra of nnunet-transfer, e.g. onnx")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.platform = args.platform or ["manylinux_2_28_x86_64"]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    excluded = {canonical(n) for n in (*ALWAYS_EXCLUDED, *args.exclude)}
    for path in args.exclude_from:
        excluded |= read_excluded(path)
    excluded.discard("nnunet-transfer")

    print(f"building nnunet-transfer's wheel into {out}", flush=True)
    before = set(out.glob("nnunet_transfer-*.whl"))
    _pip("wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT))
    ours = max(set(out.glob("nnunet_transfer-*.whl")) - before or before, key=lambda p: p.stat().st_mtime)
    spec = f"{ours}[{','.join(args.extra)}]" if args.extra else str(ours)
    print(f"resolving for Python {args.python_version} on {', '.join(args.platform)}", flush=True)
    resolved = resolve(spec, out, args)
    items = needed(resolved, "nnunet-transfer", excluded, _marker_env(args), args.extra)
    pins = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items
            if canonical(i["metadata"]["name"]) != "nnunet-transfer"]
    if pins:
        print(f"downloading {len(pins)} wheels", flush=True)
        _pip("download", "--no-deps", "--quiet", "-d", str(out), "--find-links", str(out), *_target_flags(args),
             *pins)
    requirements = [f"nnunet-transfer[{','.join(args.extra)}]" if args.extra else "nnunet-transfer", *pins]
    (out / "requirements.txt").write_text("\n".join(requirements) + "\n")
    left_out = sorted({canonical(i["metadata"]["name"]) for i in resolved} - {canonical(i["metadata"]["name"])
                                                                              for i in items})
    print(f"wheelhouse {out}: {len(pins) + 1} distributions; left out, for the target has them (or only they need "
          f"them): {', '.join(left_out) or 'nothing'}")
    print(f"on the target: pip install --no-index --find-links {out.name} -r {out.name}/requirements.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
