"""The documentation stays true: the site builds with ``mkdocs build --strict`` (broken
links, anchors and pages missing from the navigation fail it), the README stays a front
door whose links reach the site's pages and anchors, and every fact the code can report
is compared with the page that states it: the methods with ``GET /v1/prune/methods``, the
metrics with the server's ``/metrics``, the server options with ``vllm-prune serve
--help``, the load tests' files with ``loadtests/``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import Server

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_LIMIT = 12 * 1024  # the front door: what it is, set-up, quickstart, short tables, links
PRUNE_GROUPS = ("vllm-prune", "vllm-prune media fetching")  # serve.add_*_args


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with ``header``, as cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    assert rows, f"no rows under {header!r}"
    return rows


def code(cell: str) -> str:
    """The first code span of a cell."""
    found = re.search(r"`([^`]+)`", cell)
    assert found, cell
    return found.group(1)


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?", text.replace(",", ""))]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    return out


@pytest.fixture(scope="module")
def methods_document(server: Server) -> dict:
    response = requests.get(f"{server.url}/v1/prune/methods", timeout=10)
    response.raise_for_status()
    return response.json()


def test_the_site_builds_strict_with_every_page_in_the_navigation(site):
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md")}
    built = {p.parent.relative_to(site).as_posix() for p in site.glob("**/index.html")}
    assert {p.removesuffix(".md") if p != "index.md" else "." for p in pages} <= built
    # The quickstart page includes the README's quickstart, which tests/test_shapes_model.py
    # runs against the demo model: one text, tested once.
    quickstart = (site / "quickstart" / "index.html").read_text()
    assert "What color is the square?" in quickstart and "596 unpruned" in quickstart


def test_the_readme_is_a_front_door_whose_links_reach_the_site(site):
    text = README.read_text()
    assert len(text.encode()) <= README_LIMIT
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", text)
    assert len(links) >= 15
    for path, anchor in links:
        assert (ROOT / path).is_file(), path
        page = Path(path).relative_to("docs").with_suffix("")
        html = site / ("" if page.name == "index" else page) / "index.html"
        if anchor:
            assert f'id="{anchor}"' in html.read_text(), f"{path}#{anchor}"


def test_every_figure_is_shown_by_a_page():
    shown = "".join(p.read_text() for p in DOCS.glob("*.md"))
    figures = sorted(p.name for p in (DOCS / "figures").iterdir())
    assert figures and [f for f in figures if f"figures/{f})" not in shown] == []


def test_the_methods_tables_match_the_methods_endpoint(methods_document):
    served = {m["name"]: m for m in methods_document["data"]}
    page = (DOCS / "methods.md").read_text()
    rows = table(page, "| `prune` |")
    assert sorted(code(row[0]) for row in rows) == sorted(served)
    for row in rows:
        name, documented = code(row[0]), row[2]
        params = {p["name"]: p for p in served[name]["params"]}
        listed = re.findall(r"`(prune_\w+)`(?: \((?:K = )?([\d.]+)\))?", documented)
        # A method's row may name the shared FastV layer it reads, every other name is its own.
        assert {n for n, _ in listed} == set(params), name
        for param, default in listed:
            if default:
                assert float(default) == params[param]["default"], (name, param)
    readme_rows = table(README.read_text(), "| `prune` |")
    assert sorted(code(row[0]) for row in readme_rows) == sorted(served)


def test_the_request_fields_table_matches_the_methods_endpoint(methods_document):
    rows = {code(row[0]): row for row in table((DOCS / "requests.md").read_text(), "| field |")}
    params = {p["name"]: p for m in methods_document["data"] for p in m["params"]}
    assert set(rows) == set(params) | set(methods_document["fields"])
    for name, param in params.items():
        assert float(param["default"]) in numbers(rows[name][2]), name


def test_the_costs_tables_match_what_each_method_needs(methods_document):
    page = (DOCS / "choosing-a-method.md").read_text()
    needs = {m["name"]: set(m["needs"]) for m in methods_document["data"]}
    vision = {"vision_attention", "tower_attention", "in_tower"}
    rows = table(page, "| method | needs text |")
    assert {row[0] for row in rows} == {m["name"] for m in methods_document["data"]} - {
        m["name"] for m in methods_document["data"] if m["temporal"]
    }
    for name, text, tower, *_ in rows:
        assert (text == "y") == ("text" in needs[name]), name
        assert (tower == "y") == bool(needs[name] & vision), name
    video = {row[0] for row in table(page, "| method | per-frame counts")}
    assert {m["name"] for m in methods_document["data"] if m["temporal"]} <= video


def test_the_metrics_table_matches_the_exported_metrics(server: Server):
    exported = {
        name: kind
        for name, kind in re.findall(
            r"^# TYPE (vllm_prune_\w+) (\w+)$", server.metrics_text(), re.MULTILINE
        )
        if not name.endswith("_created")  # prometheus_client's creation time of each series
    }
    rows = table((DOCS / "metrics.md").read_text(), "| metric | type |")
    assert {code(row[0]): row[1] for row in rows} == exported


def test_the_server_options_table_matches_serve_help():
    env = {k: v for k, v in os.environ.items() if k != "VLLM_MAX_IMAGE_PIXELS"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "vllm-prune"), "serve", "--help=all"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    helped = {}
    for group in PRUNE_GROUPS:
        section = done.stdout.split(f"\n{group}:\n", 1)[1].split("\n\n", 1)[0]
        for option, body in re.findall(r"^  (--[\w-]+)[^\n]*\n((?:\s{20,}.*\n?)*)", section, re.M):
            default = re.search(r"\(default: ([^)]*)\)\s*$", " ".join(body.split()))
            assert default, option
            helped[option] = default.group(1)
    rows = table((DOCS / "server-options.md").read_text(), "| option |")
    documented = {code(row[0]).split()[0]: row[2] for row in rows}
    assert set(documented) == set(helped)
    for option, default in helped.items():
        cell = documented[option]
        if default == "None":
            assert cell.startswith("none"), option
        elif default == "False":
            assert cell.startswith("off"), option
        elif re.fullmatch(r"[\d.]+", default):
            assert float(default) in numbers(cell), option
        else:
            assert f"`{default}`" in cell, option


def test_the_load_tests_files_table_lists_every_script():
    rows = table((DOCS / "load-tests.md").read_text(), "| file | job |")
    listed = {name for row in rows for name in re.findall(r"`(\w+\.py)`", row[0])}
    scripts = {p.name for p in (ROOT / "loadtests").glob("*.py") if p.name != "__init__.py"}
    assert listed == scripts


def test_the_model_support_page_is_generated_from_vllms_registry():
    """docs/model-support.md is what devtools.model_list writes from the installed vLLM."""
    from devtools import model_list

    assert model_list.main(["--check"]) == 0, "run make model-list"
    version, entries = model_list.classify()
    by_name = {e.architecture: e for e in entries}
    # The families served in the tests are where the page says they are.
    for architecture in (
        "LlavaForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
        "Gemma3ForConditionalGeneration",
        "InternVLForConditionalGeneration",
        "Idefics3ForConditionalGeneration",
        "Mistral3ForConditionalGeneration",
        "PaliGemmaForConditionalGeneration",
        "Glm4vForConditionalGeneration",
        "LlavaOnevisionForConditionalGeneration",
        "LlavaNextForConditionalGeneration",
    ):
        assert by_name[architecture].status == model_list.PRUNED, architecture
    # Text-only and audio-only architectures are not listed.
    assert "Qwen2AudioForConditionalGeneration" not in by_name
    assert version in (ROOT / "docs" / "model-support.md").read_text()
