"""The web chat in a real headless Chromium (Debian's ``chromium``, driven by Playwright's Python package)
against the app served by uvicorn on loopback (real SmolLM2, embedder and FAISS, a fresh index): upload a
document, ask about it, see the answer stream in, open a citation and the plan, at desktop and phone
widths, by keyboard. Screenshots go to ``$RAGYARD_SCREENSHOTS`` (``make web-screenshots`` writes
results/web/), else to the test's temp dir."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.model]

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    if os.environ.get("RAGYARD_REQUIRE_BROWSER") == "1":
        raise RuntimeError("RAGYARD_REQUIRE_BROWSER=1 but chromium is not installed: run `make chromium`")
    pytest.skip("chromium is not installed (`make chromium`)", allow_module_level=True)

FACTS = "Zorblat is the capital of Quux. The Quux river runs purple in spring."


@pytest.fixture(scope="module")
def server(engine: Any, embedder: Any, session_tmp: Path) -> Iterator[str]:
    import uvicorn

    from retrieval.retriever import Retriever
    from services.config import load_config
    from services.deployments.retriever import RetrieverService
    from services.deployments.worker import Worker
    from services.http.app import create_app_for
    from services.pipeline import RagService
    from services.pipeline.clients import local_retriever, local_worker
    from services.serve.local import free_port

    config = load_config(
        {
            "models": [{"id": "smollm2-135m-instruct"}],
            "index": {"dir": str(session_tmp / "web-index")},
            "corpus": {"ingest_on_start": False},
            "cache": {"enabled": False},
            # The SLA controller on (built-in tiers, budgets in memory): the page shows the tiers it may
            # pick and the candidates the controller weighed.
            "sla": {"enabled": True},
        }
    )
    retriever = Retriever.create(index_dir=config.index.dir, embedder=embedder)
    svc = RagService(
        config,
        local_retriever(RetrieverService(config, retriever=retriever)),
        {config.default_model.id: local_worker(Worker(config, engine=engine))},
    )
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app_for(svc), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: the tests may run as root (CI containers), where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(os.environ.get("RAGYARD_SCREENSHOTS") or tmp_path_factory.mktemp("web"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _errors(page: Any) -> list[str]:
    seen: list[str] = []
    page.on("pageerror", lambda exc: seen.append(str(exc)))
    page.on("console", lambda msg: seen.append(msg.text) if msg.type == "error" else None)
    return seen


def test_upload_ask_stream_and_open_a_citation(server: str, browser: Any, shots: Path) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = _errors(page)
    page.goto(server + "/")
    assert page.title() == "Ragyard"
    page.wait_for_selector("#model option[value='smollm2-135m-instruct']", state="attached")
    assert "single" in page.locator("#policy option").all_inner_texts()
    tiers = page.locator("#tier option").all_inner_texts()
    assert len(tiers) > 1, tiers

    # Documents tab: add a document, see it listed.
    page.get_by_role("tab", name="Documents").click()
    page.get_by_label("Title").fill("Quux facts")
    page.get_by_label("Id (optional)").fill("quux")
    page.get_by_label("Text", exact=True).fill(FACTS)
    page.get_by_role("button", name="Add").click()
    page.wait_for_selector("#upload-status:has-text('Added quux')")
    page.wait_for_selector("#doc-rows td:has-text('quux')")
    page.screenshot(path=str(shots / "documents.png"), full_page=True)

    # Chat: ask about it; the answer streams in (its text grows over several reads), then its record.
    page.get_by_role("tab", name="Chat").click()
    page.select_option("#policy", "single")
    page.fill("#max-tokens", "40")
    page.get_by_label("Your question").fill("What is the capital of Quux?")
    page.keyboard.press("Enter")
    answer = page.locator(".turn.assistant .answer").last
    lengths: list[int] = []
    deadline = time.monotonic() + 120
    while page.locator(".turn.assistant[aria-busy='true']").count() and time.monotonic() < deadline:
        lengths.append(len(answer.inner_text()))
        time.sleep(0.02)
    assert page.locator(".turn.assistant[aria-busy='true']").count() == 0, "the answer did not finish"
    grew = sorted({n for n in lengths if n > 0})
    assert len(grew) >= 3, f"the answer did not stream: lengths seen {grew}"
    assert answer.inner_text().strip()

    # The citation names the uploaded document; opening it shows the chunk.
    citation = page.locator("button.citation").first
    assert "Quux facts" in citation.inner_text()
    citation.click()
    assert citation.get_attribute("aria-expanded") == "true"
    assert FACTS in page.locator("blockquote.chunk").inner_text()
    page.locator("details.plan summary").last.click()
    assert "single" in page.locator("details.plan summary").last.inner_text()
    assert page.locator("details.plan .reason").last.inner_text().strip()
    weighed = page.locator("details.plan table.candidates").last
    assert "predicted latency s" in weighed.inner_text() and "yes" in weighed.inner_text()
    assert page.locator("details.timings summary").last.inner_text().startswith("Timings:")
    assert "prompt" in page.locator(".usage").last.inner_text()
    page.screenshot(path=str(shots / "chat.png"), full_page=True)
    assert errors == []
    page.close()


def test_accessible_and_usable_at_phone_width(server: str, browser: Any, shots: Path) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    errors = _errors(page)
    page.goto(server + "/")
    page.wait_for_selector("#model option[value='smollm2-135m-instruct']", state="attached")
    # Every control has a label; nothing is wider than the phone.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
                 .filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label')).map(c => c.id)"""
    )
    assert unlabelled == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # Keyboard: the tabs follow the arrow keys; Enter in the question sends it.
    page.get_by_role("tab", name="Chat").focus()
    page.keyboard.press("ArrowRight")
    assert page.get_by_role("tab", name="Documents").get_attribute("aria-selected") == "true"
    assert page.locator("#panel-docs").is_visible() and not page.locator("#panel-chat").is_visible()
    page.keyboard.press("ArrowLeft")
    page.select_option("#policy", "none")
    page.fill("#max-tokens", "8")
    page.get_by_label("Your question").fill("Say hello.")
    page.keyboard.press("Enter")
    page.wait_for_selector(".turn.assistant .usage", timeout=120_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(shots / "chat-phone.png"), full_page=True)
    assert errors == []
    page.close()


def test_errors_show_in_the_page(server: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(server + "/")
    page.fill("#max-tokens", "100000")  # over the model's limit: the server's 400 is shown, not swallowed
    page.get_by_label("Your question").fill("Hello?")
    page.keyboard.press("Enter")
    alert = page.get_by_role("alert")
    alert.wait_for(timeout=60_000)
    assert "400" in alert.inner_text() and "max_tokens" in alert.inner_text()
    page.close()


def test_files_are_uploaded_as_they_are_and_a_bad_one_is_named(server: str, browser: Any) -> None:
    files = Path(__file__).parents[1] / "retrieval" / "files"
    page = browser.new_page()
    errors = _errors(page)
    page.goto(server + "/")
    page.get_by_role("tab", name="Documents").click()
    # A PDF beside an encrypted one: the server refuses the pair, naming the file; nothing is listed.
    page.set_input_files("#doc-file", [str(files / "crazyones.pdf"), str(files / "encrypted-file.pdf")])
    page.get_by_role("button", name="Add").click()
    page.wait_for_selector("#upload-status:has-text('encrypted-file.pdf: the PDF is encrypted')")
    assert page.locator("#doc-rows td:has-text('file:crazyones.pdf')").count() == 0
    page.set_input_files("#doc-file", [str(files / "crazyones.pdf"), str(files / "par-known-styles.docx")])
    page.get_by_role("button", name="Add").click()
    page.wait_for_selector("#upload-status:has-text('file:crazyones.pdf')")
    assert "file:par-known-styles.docx" in page.locator("#upload-status").inner_text()
    page.wait_for_selector("#doc-rows td:has-text('file:crazyones.pdf')")
    assert [e for e in errors if "400" not in e] == []  # the refused upload's 400 is the console's only error
    page.close()


def test_unsupported_sentences_are_marked_in_the_answer(server: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(server + "/")
    html = page.evaluate(
        """() => {
          const body = document.createElement("div");
          document.body.append(body);
          markSupport(body, "Zorblat is the capital. It was founded by Mars. ", {unsupported: 1, sentences: [
            {text: "Zorblat is the capital.", supported: true},
            {text: "It was founded by Mars.", supported: false}]});
          return [body.innerHTML, body.nextElementSibling.textContent];
        }"""
    )
    assert html[0] == (
        'Zorblat is the capital. <mark class="unsupported" title="Not found in the passages">'
        "It was founded by Mars.</mark> "
    )
    assert html[1] == "1 of 2 sentences not found in the passages (marked)."
    page.close()


def test_the_cascades_first_answer_is_shown_with_its_confidence(server: str, browser: Any) -> None:
    page = browser.new_page()
    errors = _errors(page)
    page.goto(server + "/")
    shown = page.evaluate(
        """() => {
          const box = document.createElement("div");
          document.body.append(box);
          renderRecord(box, {plan: {policy: "single", model: "small"}, timings: {total_s: 1}, cache: {response: "miss"},
            cascade: {answer: "The Lim bridge is maintained.", confidence: 0, token_probability: 0.81,
                      escalated: true, escalated_to: "big", reasons: ["restates the question"]}});
          const details = box.querySelector("details.cascade");
          return [details.querySelector("summary").textContent, details.querySelector(".first-answer").textContent,
                  details.textContent.includes("restates the question")];
        }"""
    )
    assert shown == ["Cascade: first answer escalated to big (confidence 0)", "The Lim bridge is maintained.", True]
    kept = page.evaluate(
        """() => {
          const box = document.createElement("div");
          renderRecord(box, {plan: {}, cascade: {answer: "Quux.", confidence: 0.93, escalated: false, reasons: []}});
          return box.querySelector("details.cascade summary").textContent;
        }"""
    )
    assert kept == "Cascade: first answer kept (confidence 0.93)"
    assert errors == []
    page.close()
