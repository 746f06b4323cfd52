// Ragyard's web chat: plain DOM code over the HTTP API (no framework, no build step). Server text is only
// ever set as textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { controller: null, generation: 0, history: [] };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function headers(json = true) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  const key = $("api-key").value.trim();
  if (key) h["authorization"] = "Bearer " + key;
  const tier = $("tier").value;
  if (tier) h["x-sla-tier"] = tier;
  if (state.generation) h["x-ragyard-min-generation"] = String(state.generation);
  return h;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return body.error ? `${resp.status}: ${body.error.message}` : `${resp.status}`;
  } catch (_) {
    return `${resp.status} ${resp.statusText}`;
  }
}

// -- tabs ----------------------------------------------------------------------------------------
function selectTab(tab) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  tab.focus();
  if (tab.id === "tab-docs") listDocuments();
}

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        const next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
        selectTab(next);
        e.preventDefault();
      }
    });
  });
}

// -- pickers -------------------------------------------------------------------------------------
async function loadPickers() {
  try {
    const resp = await fetch("/v1/models", { headers: headers(false) });
    if (resp.ok) {
      const models = (await resp.json()).data.filter((m) => m.id !== "auto" && !(m.description || "").includes("embedder"));
      const select = $("model");
      select.length = 1;
      for (const m of models) select.append(el("option", { value: m.id, text: m.id }));
    }
    const pol = await fetch("/v1/policies", { headers: headers(false) });
    if (pol.ok) {
      const select = $("policy");
      select.length = 1;
      for (const p of (await pol.json()).data) select.append(el("option", { value: p.id, text: p.id }));
    }
    const sla = await fetch("/v1/sla", { headers: headers(false) });
    if (sla.ok) {
      const tiers = Object.keys((await sla.json()).policy?.tiers || {});
      const select = $("tier");
      select.length = 1;
      for (const t of tiers) select.append(el("option", { value: t, text: t }));
    }
  } catch (err) {
    $("chat-status").textContent = "Could not load the pickers: " + err;
  }
}

// -- one answer's record -------------------------------------------------------------------------
function keyValues(obj) {
  const table = el("table");
  const body = el("tbody");
  for (const [k, v] of Object.entries(obj || {})) {
    body.append(el("tr", {}, el("th", { scope: "row", text: k }), el("td", { text: typeof v === "object" ? JSON.stringify(v) : String(v) })));
  }
  table.append(body);
  return el("div", { class: "table-wrap" }, table);
}

function candidatesTable(rows, columns) {
  const table = el("table", { class: "candidates" });
  const head = el("tr");
  for (const [, title] of columns) head.append(el("th", { scope: "col", text: title }));
  table.append(el("thead", {}, head));
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr");
    for (const [key] of columns) {
      let v = row[key];
      if (key === "eligible") v = row.why_not ? "no: " + row.why_not : (v === false ? "no" : "yes");
      tr.append(el("td", { text: v === undefined || v === null ? "" : String(v) }));
    }
    body.append(tr);
  }
  table.append(body);
  return el("div", { class: "table-wrap" }, table);
}

function renderRecord(box, record) {
  const citations = record.citations || [];
  if (citations.length) {
    const list = el("ul", { class: "citations", "aria-label": "Citations" });
    const shown = el("div");
    citations.forEach((c, i) => {
      const button = el("button", { type: "button", class: "quiet citation", "aria-expanded": "false", text: `[${i + 1}] ${c.title || c.document_id}${c.section ? ` › ${c.section}` : ""}` });
      button.addEventListener("click", () => {
        const open = button.getAttribute("aria-expanded") === "true";
        for (const b of list.querySelectorAll("button")) b.setAttribute("aria-expanded", "false");
        shown.replaceChildren();
        if (!open) {
          button.setAttribute("aria-expanded", "true");
          shown.append(el("blockquote", { class: "chunk", text: c.text || "" }),
            el("p", { class: "status", text: `${c.document_id}${c.page ? `, page ${c.page}` : ""}, chunk ${c.chunk}, score ${c.score}` }));
        }
      });
      list.append(el("li", {}, button));
    });
    box.append(list, shown);
  }
  const plan = record.plan || {};
  const planBox = el("details", { class: "plan" }, el("summary", { text: `Plan: ${plan.policy} on ${plan.model}` }));
  planBox.append(el("p", { class: "reason", text: plan.reason || "" }));
  planBox.append(keyValues({ top_k: plan.top_k, max_tokens: plan.max_tokens, speculative: plan.speculative, chunk_cache: plan.chunk_cache, complexity: plan.complexity ? plan.complexity.class : null, retrieval_steps: record.retrieval_steps, llm_calls: record.llm_calls }));
  const routed = plan.routing && plan.routing.candidates;
  if (routed && routed.length) {
    planBox.append(el("h4", { text: "Candidates the router weighed" }),
      candidatesTable(routed, [["model", "model"], ["policy", "policy"], ["expected_quality", "quality"], ["expected_latency_s", "latency s"], ["eligible", "eligible"]]));
  }
  const weighed = record.sla && record.sla.candidates;
  if (weighed && weighed.length) {
    planBox.append(el("h4", { text: "Candidates the SLA controller weighed" }),
      candidatesTable(weighed, [["plan", "plan"], ["quality", "quality"], ["predicted_latency_s", "predicted latency s"], ["predicted_ttft_s", "predicted TTFT s"], ["eligible", "eligible"]]));
  }
  const timings = el("details", { class: "timings" }, el("summary", { text: `Timings: ${record.timings ? record.timings.total_s : "?"} s` }), keyValues(record.timings));
  const cache = el("details", { class: "cache" }, el("summary", { text: `Cache: ${record.cache ? record.cache.response : "?"}` }), keyValues(record.cache));
  box.append(planBox, timings, cache);
  const cascade = record.cascade;
  if (cascade) {
    // The confidence cascade's first answer: what the cheaper model said, how sure it was, and what came of it.
    const verdict = cascade.escalated ? `escalated to ${cascade.escalated_to}` : "kept";
    const why = (cascade.reasons || []).join("; ");
    box.append(el("details", { class: "cascade" }, el("summary", { text: `Cascade: first answer ${verdict} (confidence ${cascade.confidence})` }),
      el("blockquote", { class: "first-answer", text: cascade.answer || "" }),
      keyValues({ confidence: cascade.confidence, token_probability: cascade.token_probability, escalated: cascade.escalated, why: why || "none" })));
  }
  if (record.speculative) {
    box.append(el("details", { class: "speculative" }, el("summary", { text: "Speculation" }), keyValues(record.speculative)));
  }
}

// The answer's sentences that its passages do not support, marked in place (record.support).
function markSupport(body, text, support) {
  if (!support || !support.unsupported) return;
  const parts = [];
  let at = 0;
  for (const s of support.sentences) {
    const found = text.indexOf(s.text, at);
    if (found < 0) continue;
    if (found > at) parts.push(document.createTextNode(text.slice(at, found)));
    parts.push(s.supported ? document.createTextNode(s.text) : el("mark", { class: "unsupported", title: "Not found in the passages", text: s.text }));
    at = found + s.text.length;
  }
  parts.push(document.createTextNode(text.slice(at)));
  body.replaceChildren(...parts);
  body.after(el("p", { class: "status support", text: `${support.unsupported} of ${support.sentences.length} sentences not found in the passages (marked).` }));
}

// -- chat ----------------------------------------------------------------------------------------
function turn(role, text) {
  const item = el("li", { class: "turn " + role }, el("div", { class: "who", text: role === "user" ? "You" : "Ragyard" }));
  const body = el("div", { class: "answer", text });
  item.append(body);
  $("log").append(item);
  item.scrollIntoView({ block: "end" });
  return [item, body];
}

async function* sse(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue; // comments (": keep-alive") and other fields
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || state.controller) return;
  $("question").value = "";
  turn("user", question);
  const [item, body] = turn("assistant", "");
  item.setAttribute("aria-busy", "true");
  const payload = {
    model: $("model").value,
    messages: [...state.history, { role: "user", content: question }],
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number($("max-tokens").value) || 128,
  };
  if ($("policy").value) payload.policy = $("policy").value;
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  $("chat-status").textContent = "Thinking…";
  let text = "";
  try {
    const resp = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(payload), signal: state.controller.signal });
    if (!resp.ok) throw new Error(await errorText(resp));
    for await (const chunk of sse(resp)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        text += choice.delta.content;
        body.textContent = text;
        $("chat-status").textContent = "Answering…";
      }
      if (chunk.ragyard) {
        renderRecord(item, chunk.ragyard);
        markSupport(body, text, chunk.ragyard.support);
      }
      if (chunk.usage) item.append(el("p", { class: "status usage", text: `${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens` }));
    }
    state.history.push({ role: "user", content: question }, { role: "assistant", content: text });
    state.history = state.history.slice(-8);
    $("chat-status").textContent = "";
  } catch (err) {
    const stopped = err.name === "AbortError";
    item.append(el("p", { class: stopped ? "status" : "error", role: stopped ? "status" : "alert", text: stopped ? "Stopped." : String(err.message || err) }));
    $("chat-status").textContent = "";
  } finally {
    item.removeAttribute("aria-busy");
    state.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
    $("question").focus();
  }
}

// -- documents -----------------------------------------------------------------------------------
async function listDocuments() {
  const rows = $("doc-rows");
  try {
    const resp = await fetch("/v1/documents?limit=1000", { headers: headers(false) });
    if (!resp.ok) throw new Error(await errorText(resp));
    rows.replaceChildren();
    for (const d of (await resp.json()).data) {
      const remove = el("button", { type: "button", class: "quiet", text: "Delete", "aria-label": `Delete ${d.id}` });
      remove.addEventListener("click", () => deleteDocument(d.id));
      rows.append(el("tr", {}, el("td", { text: d.id }), el("td", { text: d.title }), el("td", { text: d.namespace }), el("td", { text: String(d.chunks) }), el("td", {}, remove)));
    }
  } catch (err) {
    $("upload-status").textContent = "Could not list documents: " + (err.message || err);
  }
}

async function deleteDocument(id) {
  const resp = await fetch("/v1/documents/" + encodeURIComponent(id), { method: "DELETE", headers: headers(false) });
  if (resp.ok) state.generation = Math.max(state.generation, (await resp.json()).generation || 0);
  $("upload-status").textContent = resp.ok ? `Deleted ${id}.` : await errorText(resp);
  listDocuments();
}

// An ingestion job's progress in the bar until it has finished; its result, or an error with each file's reason.
async function followJob(location) {
  const bar = $("upload-progress");
  bar.hidden = false;
  try {
    for (;;) {
      const resp = await fetch(location, { headers: headers(false) });
      if (!resp.ok) throw new Error(await errorText(resp));
      const job = await resp.json();
      if (job.stage === "indexing" || job.stage === "done") {
        bar.max = Math.max(job.documents, 1);
        bar.value = job.indexed;
        $("upload-status").textContent = `Indexed ${job.indexed} of ${job.documents} documents…`;
      } else {
        bar.max = Math.max(job.files, 1);
        bar.value = job.read + job.refused;
        $("upload-status").textContent = `Read ${job.read + job.refused} of ${job.files} files…`;
      }
      if (job.status === "succeeded") {
        return { ...job, chunks_added: job.chunks };
      }
      if (job.status === "failed") {
        throw new Error([job.error, ...job.errors.map((e) => e.message)].join(" — "));
      }
      await new Promise((done) => setTimeout(done, 400));
    }
  } finally {
    bar.hidden = true;
  }
}

async function upload(event) {
  event.preventDefault();
  const files = [...$("doc-file").files];
  const text = $("doc-text").value;
  if (!files.length && !text.trim()) {
    $("upload-status").textContent = "Give a text or a file.";
    return;
  }
  let body;
  let h;
  if (files.length) {
    // Files go as they are (PDF, Word, HTML, text, markdown, JSONL), one multipart form: the server reads each
    // by its type, and a file it cannot read refuses the upload with its name.
    body = new FormData();
    for (const f of files) body.append("file", f, f.name);
    h = headers(false);
    // As a job: the server answers at once and the page shows its progress while it reads and indexes.
    h["prefer"] = "respond-async";
  } else {
    const doc = { title: $("doc-title").value, text, type: "text" };
    if ($("doc-id").value.trim()) doc.id = $("doc-id").value.trim();
    body = JSON.stringify({ documents: [doc] });
    h = headers();
  }
  $("add-doc").disabled = true;
  $("upload-status").textContent = files.length ? `Reading ${files.length} file(s)…` : "Adding…";
  try {
    const resp = await fetch("/v1/documents", { method: "POST", headers: h, body });
    if (!resp.ok) throw new Error(await errorText(resp));
    let result = await resp.json();
    if (resp.status === 202) result = await followJob(resp.headers.get("location") || `/v1/documents/jobs/${result.id}`);
    // Later questions read at least this corpus generation (read-your-writes on any replica).
    state.generation = Math.max(state.generation, result.generation || 0);
    const ids = [...result.added, ...result.updated, ...result.unchanged];
    $("upload-status").textContent = `Added ${ids.join(", ")} to ${result.namespace} (${result.chunks_added} chunks).`;
    $("upload").reset();
    listDocuments();
  } catch (err) {
    $("upload-status").textContent = String(err.message || err);
  } finally {
    $("add-doc").disabled = false;
  }
}

// -- start ---------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  setupTabs();
  const saved = sessionStorage.getItem("ragyard-key");
  if (saved) $("api-key").value = saved;
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("ragyard-key", $("api-key").value.trim());
    loadPickers();
  });
  $("ask").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("ask").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("upload").addEventListener("submit", upload);
  $("refresh-docs").addEventListener("click", listDocuments);
  loadPickers();
});
