"""The documents as the repository's front door: a README short enough to
read, relative links that resolve, a code map that names every module as it
is, and prose that speaks of the product, never of how its work was organised
(tracker references, the words of a work schedule)."""
import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from chalicelib.settings import QUEUES

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300

FENCED_BLOCK = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
# Tracker references and the words of a work schedule; a round trip is fine.
PROCESS_WORDS = re.compile(
    r"\bissues?\s*#\s*\d+|\bissues?\s+\d+\b|\bturn-\d+|\bturn\b|\brounds?\b(?![\s-]+trips?\b)(?!\()",
    re.I)


def _prose_of_markdown(text):
    return INLINE_CODE.sub("", FENCED_BLOCK.sub("", text))


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path):
    return {_slug(h) for h in HEADING.findall(FENCED_BLOCK.sub("", path.read_text()))}


def _relative_links(path):
    for target in LINK.findall(_prose_of_markdown(path.read_text())):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
            yield target


def test_readme_is_at_most_300_lines():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move the detail to docs/"


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _relative_links(page):
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


def _python_prose(path):
    """Comments and docstrings: what a .py file says in words."""
    source = path.read_text()
    comments = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT]
    nodes = [node for node in ast.walk(ast.parse(source))
             if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return "\n".join(comments + [ast.get_docstring(node) or "" for node in nodes])


def _prose_files():
    yield from ((page, page.read_text()) for page in MARKDOWN)
    for path in sorted((ROOT / "chalicelib").rglob("*")):
        if path.suffix == ".py":
            yield path, _python_prose(path)
        elif path.suffix in (".sql", ".json"):
            yield path, path.read_text()


def test_no_process_words_in_the_docs_or_the_code():
    found = [f"{path.relative_to(ROOT)}: {match.group(0)!r}"
             for path, text in _prose_files() for match in PROCESS_WORDS.finditer(text)]
    assert not found, "say what the product does, not how its work was organised:\n" + "\n".join(found)


def _code_map():
    """The paths the README's code map names, from the indentation of its tree."""
    section = README.read_text().split("## Map of the code", 1)[1]
    block = FENCED_BLOCK.search(section).group(0).splitlines()[1:-1]
    paths, parents = set(), []
    for line in block:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0] if line.strip() else ""
        if not name or ("/" not in name and "." not in name) or depth > len(parents):
            continue  # a description running onto the next line
        parents[depth:] = [name.rstrip("/")]
        paths.add("/".join(parents))
    return paths


def test_the_code_map_names_every_module_and_no_other():
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "chalicelib").rglob("*.py") if p.name != "__init__.py"}
    mapped = {p for p in _code_map() if p.startswith("chalicelib/") and p.endswith(".py")}
    assert modules - mapped == set(), "modules missing from the README's map"
    assert mapped - modules == set(), "the README's map names modules that do not exist"


def test_the_readme_names_every_handler_and_queue():
    readme = README.read_text()
    sources = [ROOT / "app.py", *sorted((ROOT / "chalicelib" / "entrypoints" / "routes").glob("*.py"))]
    functions = [name for path in sources for name in re.findall(
        r"(?:schedule\(Rate\([^)]*\),|lambda_function\()\s*name=\"(\w+)\"", path.read_text())]
    blueprints = re.findall(r"register_blueprint\((\w+)\.routes\)", (ROOT / "app.py").read_text())
    named = [*(q.handler for q in QUEUES), *(q.default_name for q in QUEUES), *functions, *blueprints]
    assert functions and blueprints
    assert [name for name in named if f"`{name}`" not in readme] == []
