"""README.md and docs/: every relative link and #anchor resolves; every ``nnunet-transfer`` command they show exists
in the CLI's parser (subcommands, nested actions such as ``campaign run``, and flags), every ``nnUNetv2_*`` command in
the installed nnU-Net, and every recipe they show loads.

What is checked:

- links ``[text](target)``, images, reference definitions ``[ref]: target`` and ``<a href="...">`` outside code: a
  relative target must exist (relative to the Markdown file); a ``#anchor`` (alone or after a ``.md`` file) must be
  the slug of a heading of that file, as GitHub makes it (lowercase, punctuation other than ``-`` and ``_`` removed,
  spaces to ``-``, repeated slugs get ``-1``, ``-2``...), or an explicit ``<a id>``/``<a name>``;
- commands in fenced code blocks and inline code: ``nnunet-transfer SUB [ACTION] ... --flag`` must name a subcommand
  (and action) of :func:`nnunet_transfer.cli.build_parser` and only flags that parser accepts; ``run\\|status`` lists
  alternatives (each must exist; a flag must belong to one of them); ``nnUNetv2_*`` commands must be console
  scripts of the installed nnU-Net and use only flags their entry points declare (read from nnU-Net's source);
- every recipe a YAML code block shows (a mapping with ``name``, not a campaign file) loads with
  :func:`~nnunet_transfer.load_recipe` and resolves its selectors on a real PlainConvUNet or ResidualEncoderUNet;
- an inline code span that is only a flag (```--load-decoder```, ```--rename PATTERN=REPLACEMENT```) must be a flag of
  some ``nnunet-transfer`` or ``nnUNetv2_*`` command, or one of the few others listed in :data:`FOREIGN_FLAGS`.

Failures name the file, the line and what is wrong.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from nnunet_transfer import derive_groups, load_recipe, resolve_schedule
from nnunet_transfer.cli import build_parser
from nnunet_transfer.errors import RecipeError

ROOT = Path(__file__).resolve().parents[2]
PROG = "nnunet-transfer"

# flags that docs show in inline code on their own and that belong to neither nnunet-transfer nor nnU-Net's
# nnUNetv2_* commands (whose flags are read from nnU-Net's source): a lone flag span must be one of the three
FOREIGN_FLAGS = frozenset({
    "--signal",  # sbatch
    "-S", "-I",  # python
})


@functools.cache
def script_flags() -> frozenset[str]:
    """The flags of the repository's scripts that docs show (``scripts/wheelhouse.py``)."""
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "wheelhouse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return frozenset(all_flags(module.build_parser()))


def doc_files() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# --------------------------------------------------------------------------------------------------- Markdown parsing

@dataclass(frozen=True)
class Chunk:
    """A piece of a Markdown file: prose (a paragraph), a code block, or an inline code span; ``line`` is 1-based."""

    kind: str  # "prose" | "code" | "inline"
    line: int
    text: str
    raw: str = ""  # prose: the paragraph with its inline code (for headings)


_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


def split_markdown(text: str) -> list[Chunk]:
    """Fenced code blocks (one chunk each), paragraphs of prose, and the inline code spans of those paragraphs.

    Prose chunks have their inline code replaced by spaces (a link inside code is no link); inline chunks carry the
    line on which the span starts.
    """
    chunks: list[Chunk] = []
    lines = text.splitlines()
    fence: str | None = None
    block: list[str] = []
    block_start = 0
    para: list[tuple[int, str]] = []

    def flush_paragraph() -> None:
        if not para:
            return
        joined = "\n".join(t for _, t in para)
        first = para[0][0]
        prose = joined
        for m in _SPAN.finditer(joined):
            line = first + joined.count("\n", 0, m.start())
            chunks.append(Chunk("inline", line, " ".join(m.group(2).split())))
            prose = prose[: m.start()] + " " * (m.end() - m.start()) + prose[m.end():]
        chunks.append(Chunk("prose", first, prose, joined))
        para.clear()

    for number, line in enumerate(lines, start=1):
        if fence is not None:
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                chunks.append(Chunk("code", block_start, "\n".join(block)))
                fence, block = None, []
            else:
                block.append(line)
            continue
        m = _FENCE.match(line)
        if m:
            flush_paragraph()
            fence, block_start = m.group(1), number + 1
            continue
        if not line.strip():
            flush_paragraph()
        else:
            para.append((number, line))
    flush_paragraph()
    if fence is not None:
        chunks.append(Chunk("code", block_start, "\n".join(block)))
    return chunks


# ------------------------------------------------------------------------------------------------- links and anchors

_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_HREF = re.compile(r"<a\s[^>]*href=\"([^\"]+)\"", re.I)
_EXPLICIT_ANCHOR = re.compile(r"<a\s[^>]*(?:id|name)=\"([^\"]+)\"", re.I)
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def heading_text(raw: str) -> str:
    """A heading as GitHub renders it to text: code spans, links, images, emphasis and HTML tags reduced to text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"`+([^`]*)`+", r"\1", text)
    return text.replace("**", "").replace("*", "")


def slugify(heading: str) -> str:
    """GitHub's slug of a heading's text: lowercase; characters other than letters, digits, ``_``, ``-`` and spaces
    removed; spaces to ``-``."""
    text = heading_text(heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown file defines: its headings' slugs (repeats numbered ``-1``, ``-2``...) and explicit
    ``<a id="...">`` / ``<a name="...">``."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for chunk in split_markdown(text):
        if chunk.kind != "prose":
            continue
        found.update(_EXPLICIT_ANCHOR.findall(chunk.text))
        for line in chunk.raw.splitlines():
            m = _HEADING.match(line)
            if not m:
                continue
            base = slugify(m.group(2))
            slug = base
            while slug in found:
                seen[base] = seen.get(base, 0) + 1
                slug = f"{base}-{seen[base]}"
            found.add(slug)
    return found


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every link, image, reference definition and ``<a href>`` outside code."""
    out: list[tuple[int, str]] = []
    for chunk in split_markdown(text):
        if chunk.kind != "prose":
            continue
        for pattern in (_LINK, _REF_DEF, _HREF):
            for m in pattern.finditer(chunk.text):
                out.append((chunk.line + chunk.text.count("\n", 0, m.start()), m.group(1)))
    return sorted(out)


def link_problems(path: Path, text: str) -> list[str]:
    """One message per link of ``text`` (the content of ``path``) whose file or anchor does not exist."""
    problems = []
    for line, target in links(text):
        if _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path}:{line}: link {target!r}"
        if file_part and not dest.exists():
            problems.append(f"{where}: no such file {dest}")
            continue
        if anchor and dest.suffix == ".md":
            known = anchors(text if dest == path else dest.read_text())
            if anchor not in known:
                close = sorted(a for a in known if anchor[:6] in a)[:5]
                problems.append(f"{where}: no heading with anchor #{anchor} in {dest.name}"
                                + (f" (similar: {', '.join(close)})" if close else ""))
    return problems


# --------------------------------------------------------------------------------------------------- CLI commands

def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands of ``parser`` (empty if it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


def all_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag of ``parser`` and of every parser below it."""
    out = flags(parser)
    for sub in subparsers(parser).values():
        out |= all_flags(sub)
    return out


_FLAG = re.compile(r"^(--?[A-Za-z][\w-]*)")
_SEGMENT_SPLIT = re.compile(r"\s(?:\|\||&&|\|)\s|;|\$\(|`")
_ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")


def _tokens(segment: str) -> list[str]:
    out = []
    for raw in segment.split():
        token = raw.strip("[](){},.'\"").replace("\\|", "|")
        if token and token != "...":
            out.append(token)
    return out


def command_segments(chunk: Chunk) -> list[tuple[int, str, list[str]]]:
    """(line, program, tokens after it) for each ``nnunet-transfer`` or ``nnUNetv2_*`` command of a code block or
    inline span.

    Code blocks: ``\\`` continuations joined, ``#`` comments dropped, commands split at ``&&``, ``;``, `` | ``.
    A command is the program (or ``.../program``) at the start of its segment, after environment assignments
    (``X=1 nnunet-transfer ...``).
    """
    if chunk.kind == "inline":
        lines = [(chunk.line, chunk.text)]
    else:
        lines, pending, start = [], "", 0
        for offset, line in enumerate(chunk.text.splitlines()):
            if not pending:
                start = chunk.line + offset
            line = re.sub(r"(^|\s)#.*$", "", line)
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            lines.append((start, pending + line))
            pending = ""
        if pending:
            lines.append((start, pending))
    out = []
    for line, text in lines:
        for segment in _SEGMENT_SPLIT.split(text):
            words = segment.split()
            while words and _ENV_ASSIGN.match(words[0]):
                words = words[1:]
            program = words[0].rsplit("/", 1)[-1] if words else ""
            if program == PROG or re.fullmatch(NNUNET_PREFIX + r"\w+", program):  # not the family ``nnUNetv2_*``
                out.append((line, program, _tokens(" ".join(words[1:]))))
    return out


NNUNET_PREFIX = "nnUNetv2_"


def _add_argument_flags(function: ast.FunctionDef) -> set[str]:
    out = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            out.update(a.value for a in node.args
                       if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-"))
    return out


@functools.cache
def nnunet_commands() -> dict[str, str]:
    """The installed nnU-Net's console scripts: name -> ``module:function``."""
    return {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")
            if e.name.startswith(NNUNET_PREFIX)}


@functools.cache
def nnunet_flags(command: str) -> frozenset[str]:
    """The flags of an ``nnUNetv2_*`` command, read from the source of its entry point without importing it: the
    ``add_argument`` calls of the entry function and of the module's functions it calls (shared argument helpers)."""
    module, function = nnunet_commands()[command].split(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    tree = ast.parse(Path(spec.origin).read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    entry = functions[function]
    flags = {"-h", "--help"} | _add_argument_flags(entry)
    for node in ast.walk(entry):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
            flags |= _add_argument_flags(functions[node.func.id])
    return frozenset(flags)


def all_nnunet_flags() -> frozenset[str]:
    """Every flag of every ``nnUNetv2_*`` command."""
    return frozenset().union(*(nnunet_flags(c) for c in nnunet_commands()))


def nnunet_command_problems(program: str, tokens: list[str]) -> list[str]:
    """What is wrong with ``nnUNetv2_X TOKENS``: no such command in the installed nnU-Net, or a flag it lacks."""
    if program not in nnunet_commands():
        return [f"{program}: no such nnU-Net command (installed: {', '.join(sorted(nnunet_commands()))})"]
    known = nnunet_flags(program)
    return [f"{program}: unknown flag {m.group(1)!r} (known: {', '.join(sorted(known))})"
            for token in tokens if (m := _FLAG.match(token)) and m.group(1) not in known]


def command_problems(tokens: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with ``nnunet-transfer TOKENS``: an unknown subcommand or action, or a flag no parser takes."""
    parsers = [parser]
    path = PROG
    problems = []
    rest = list(tokens)
    while rest and subparsers(parsers[0]) and not _FLAG.match(rest[0]):
        word = rest.pop(0)
        choices = {}
        for p in parsers:
            choices.update(subparsers(p))
        names = word.split("|")
        unknown = [n for n in names if n not in choices]
        if unknown:
            return [f"{path}: unknown subcommand {', '.join(map(repr, unknown))} (known: {', '.join(sorted(choices))})"]
        parsers = [choices[n] for n in names]
        path = f"{path} {word}"
    known = set().union(*(flags(p) for p in parsers))
    for token in rest:
        m = _FLAG.match(token)
        if m and m.group(1) not in known:
            problems.append(f"{path}: unknown flag {m.group(1)!r} (known: {', '.join(sorted(known))})")
    return problems


def cli_problems(path: Path, text: str, parser: argparse.ArgumentParser) -> list[str]:
    """One message per ``nnunet-transfer`` command or lone flag of ``text`` that the CLI does not have, and per
    ``nnUNetv2_*`` command or flag the installed nnU-Net does not have."""
    problems = []
    every_flag = all_flags(parser)
    for chunk in split_markdown(text):
        if chunk.kind == "prose":
            continue
        for line, program, tokens in command_segments(chunk):
            found = (command_problems(tokens, parser) if program == PROG
                     else nnunet_command_problems(program, tokens))
            problems += [f"{path}:{line}: {p}" for p in found]
        if chunk.kind == "inline":
            m = _FLAG.match(chunk.text)
            if m and m.group(1) not in every_flag | all_nnunet_flags() | script_flags() | FOREIGN_FLAGS:
                problems.append(f"{path}:{chunk.line}: {chunk.text!r}: {m.group(1)!r} is no flag of any {PROG} "
                                f"or nnUNetv2_* command, nor of scripts/wheelhouse.py (nor of sbatch/python: "
                                f"FOREIGN_FLAGS in {Path(__file__).name})")
    return problems


# ---------------------------------------------------------------------------------------------------------- recipes

def recipe_blocks(text: str) -> list[tuple[int, str]]:
    """(line, YAML) of every code block that is a recipe: a mapping with ``name`` that is no campaign file (those have
    ``targets``). A misspelt recipe key still counts, so that it fails."""
    out = []
    for chunk in split_markdown(text):
        if chunk.kind != "code":
            continue
        try:
            data = yaml.safe_load(chunk.text)
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and "name" in data and "targets" not in data:
            out.append((chunk.line, chunk.text))
    return out


def _unet_group_names() -> list[list[str]]:
    """The parameter groups of a real (tiny) PlainConvUNet and ResidualEncoderUNet, 3d, 6 stages, as nnU-Net builds
    them."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    from torch import nn

    common = dict(input_channels=1, n_stages=6, features_per_stage=(2, 2, 2, 2, 2, 2), conv_op=nn.Conv3d,
                  kernel_sizes=3, strides=(1, 2, 2, 2, 2, 2), num_classes=3, n_conv_per_stage_decoder=1,
                  conv_bias=True, norm_op=nn.InstanceNorm3d, nonlin=nn.LeakyReLU, deep_supervision=True)
    nets = [PlainConvUNet(n_conv_per_stage=1, **common), ResidualEncoderUNet(n_blocks_per_stage=1, **common)]
    return [[g.name for g in derive_groups(net)] for net in nets]


def recipe_problems(path: Path, text: str, tmp: Path) -> list[str]:
    """One message per recipe block of ``text`` that does not load or whose selectors fit neither U-Net."""
    problems = []
    networks = None
    for line, block in recipe_blocks(text):
        file = tmp / f"recipe_{line}.yaml"
        file.write_text(block)
        try:
            recipe = load_recipe(file)
        except RecipeError as e:
            problems.append(f"{path}:{line}: recipe does not load: {e}")
            continue
        networks = networks or _unet_group_names()
        errors = []
        for names in networks:
            try:
                resolve_schedule(recipe, names, recipe.num_epochs or 1000, 0.01)
                break
            except RecipeError as e:
                errors.append(str(e))
        else:
            problems.append(f"{path}:{line}: recipe {recipe.name} fits no U-Net: {'; '.join(errors)}")
    return problems


# --------------------------------------------------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    """The real ``nnunet-transfer`` parser."""
    return build_parser()


def test_docs_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in doc_files()}
    assert "docs/README.md" in names and len(names) > 5, names


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_and_anchors_resolve(path: Path) -> None:
    problems = link_problems(path, path.read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_commands_and_flags_exist(path: Path, parser: argparse.ArgumentParser) -> None:
    problems = cli_problems(path, path.read_text(), parser)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_recipes_shown_load(path: Path, tmp_path: Path) -> None:
    problems = recipe_problems(path, path.read_text(), tmp_path)
    assert not problems, "\n".join(problems)


def test_recipes_are_found_in_the_docs() -> None:
    shown = {yaml.safe_load(block)["name"] for p in doc_files() for _, block in recipe_blocks(p.read_text())}
    assert {"my-recipe", "continue", "freeze_early", "heads_only", "new_channels"} <= shown, shown


def test_every_doc_page_is_linked_from_the_index() -> None:
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for _, t in links(index.read_text())
              if not _EXTERNAL.match(t) and t.partition("#")[0]}
    orphans = [p.name for p in doc_files()[1:] if p != index and p.resolve() not in linked]
    assert not orphans, f"docs/README.md links no page {orphans}"


# ------------------------------------------------------------------------ the checks themselves (in-memory texts)

@pytest.mark.parametrize(("heading", "slug"), [
    ("Fine-tuning nnssl / OpenMind checkpoints", "fine-tuning-nnssl--openmind-checkpoints"),
    ("Two commands", "two-commands"),
    ("`load_encoder`: a verified encoder", "load_encoder-a-verified-encoder"),
    ("Plans transfer: fine-tune with the pretrained network's own plans",
     "plans-transfer-fine-tune-with-the-pretrained-networks-own-plans"),
    ("4 channels to 7 (and other channel counts)", "4-channels-to-7-and-other-channel-counts"),
])
def test_slug_follows_github(heading: str, slug: str) -> None:
    assert slugify(heading) == slug


def test_repeated_headings_get_numbered_anchors() -> None:
    text = "# Usage\n\n## Usage\n\n```\n# Usage\n```\n\n### Usage\n"
    assert anchors(text) == {"usage", "usage-1", "usage-2"}  # the comment inside code is no heading


BASE = "# Page\n\n## A section\n\nText.\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("See [it](#a-section).", None),
    ("See [the other page](other.md#other-heading).", None),
    ("See [it](#a-sectoin).", "no heading with anchor #a-sectoin in page.md"),
    ("See [it](missing.md).", "no such file"),
    ("See [it](other.md#nope).", "no heading with anchor #nope in other.md"),
    ("[ref]: ./missing/file.yaml", "no such file"),
    ("`[not a link](missing.md)` and [web](https://example.org/x#y)", None),
], ids=["anchor", "file-and-anchor", "bad-anchor", "bad-file", "bad-anchor-elsewhere", "bad-reference", "ignored"])
def test_link_check_catches_broken_links(tmp_path: Path, text: str, expected: str | None) -> None:
    (tmp_path / "other.md").write_text("# Other heading\n")
    page = tmp_path / "page.md"
    content = BASE + "\n" + text + "\n"
    page.write_text(content)
    problems = link_problems(page, content)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems
        assert f"{page}:7:" in problems[0]  # names file and line


@pytest.mark.parametrize(("block", "expected"), [
    ("name: ok\nphases:\n  - {start_epoch: 0, unfreeze: [heads]}", None),
    ("name: typo\nphase:\n  - {start_epoch: 0, unfreeze: [heads]}", "phase: unknown key"),
    ("name: nogroup\nphases:\n  - {start_epoch: 0, unfreeze: [\"decoder.stem\"]}", "'decoder.stem' matches no"),
], ids=["ok", "unknown-key", "no-such-group"])
def test_recipe_check_catches_bad_recipes(tmp_path: Path, block: str, expected: str | None) -> None:
    problems = recipe_problems(Path("page.md"), f"# Page\n\n```yaml\n{block}\n```\n", tmp_path)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0] and problems[0].startswith("page.md:4:"), problems


@pytest.mark.parametrize(("text", "expected"), [
    ("```bash\nnnunet-transfer check CKPT -d 501 -c 3d_fullres --min-coverage 0.8 -v\n```", None),
    ("```bash\nnnunet-transfer campaign run c.yaml --dry-run   # --not-a-flag in a comment\n```", None),
    ("```bash\nX=1 .venv/bin/nnunet-transfer plans --from C -t 1 -tp P \\\n    --patch-size 64 64 64\n```", None),
    ("`nnunet-transfer campaign run\\|status\\|report FILE [--dry-run] [-o DIR]`", None),
    ("`pip install nnunet-transfer --upgrade`", None),  # not the command: a package name
    ("`--load-decoder` and `--c` and `-pretrained_weights`", None),
    ("```bash\nnnunet-transfer check CKPT -d 501 --min-coverge 0.8\n```", "unknown flag '--min-coverge'"),
    ("`nnunet-transfer export M -f 0 --format onnx -o m.onnx --zip`", "unknown flag '--zip'"),
    ("```\nnnunet-transfer fine-tune CKPT\n```", "unknown subcommand 'fine-tune'"),
    ("`nnunet-transfer campaign resume c.yaml`", "unknown subcommand 'resume'"),
    ("`nnunet-transfer campaign status c.yaml -o DIR`", "nnunet-transfer campaign status: unknown flag '-o'"),
    ("`--no-adapt-kernal`", "'--no-adapt-kernal' is no flag"),
    ("```bash\nnnUNetv2_train 1 3d_fullres 0 -tr T -pretrained_weights C --npz\nnnUNetv2_plan_and_preprocess -d 1 "
     "--verify_dataset_integrity --no_pbar\n```", None),
    ("`nnUNetv2_train 1 3d_fullres 0 --continue`", "nnUNetv2_train: unknown flag '--continue'"),
    ("```\nnnUNetv2_finetune 1 3d_fullres 0\n```", "nnUNetv2_finetune: no such nnU-Net command"),
], ids=["ok", "comment", "continuation", "alternatives", "package-name", "lone-flags", "bad-flag", "bad-flag-inline",
        "bad-subcommand", "bad-action", "flag-of-another-action", "bad-lone-flag", "nnunet-ok", "nnunet-bad-flag",
        "nnunet-bad-command"])
def test_cli_check_catches_unknown_commands_and_flags(parser: argparse.ArgumentParser, text: str,
                                                      expected: str | None) -> None:
    problems = cli_problems(Path("page.md"), "# Page\n\n" + text + "\n", parser)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems
        assert problems[0].startswith("page.md:3") or problems[0].startswith("page.md:4"), problems[0]
