// The page: ask, show the completion as the model writes it (Server-Sent Events over fetch), then the answer with
// its citations; a click on a citation shows its source segment with the quoted span highlighted. Everything from
// the server is put in the page as text (textContent), never as HTML: documents are data.
"use strict";

const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

// Parse a buffer of Server-Sent Events; returns [events, rest not yet complete].
function parseEvents(buffer) {
  const events = [];
  const blocks = buffer.split("\n\n");
  const rest = blocks.pop();
  for (const block of blocks) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    events.push({ event, data: data.length ? JSON.parse(data.join("\n")) : null });
  }
  return [events, rest];
}

async function errorText(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) {
    return response.statusText;
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  $("ask").disabled = true;
  $("answer-box").hidden = true;
  $("stream-box").hidden = false;
  clear($("stream"));
  setStatus("Asking…");
  try {
    const response = await fetch("/v1/ask", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ question, k: Number($("k").value) || 4, stream: true }),
    });
    if (!response.ok) {
      setStatus(`Error ${response.status}: ${await errorText(response)}`, true);
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      let events;
      [events, buffer] = parseEvents(buffer + decoder.decode(value, { stream: true }));
      for (const e of events) {
        if (e.event === "token") $("stream").textContent += e.data.text;
        else if (e.event === "answer") { showAnswer(e.data); setStatus(""); }
        else if (e.event === "error") setStatus(`Error ${e.data.status}: ${e.data.detail}`, true);
      }
    }
  } catch (e) {
    setStatus("Error: " + e, true);
  } finally {
    $("ask").disabled = false;
  }
}

function showAnswer(record) {
  $("answer-box").hidden = false;
  $("source-view").hidden = true;
  $("abstained").hidden = !record.abstained;
  $("answer").textContent = record.abstained ? "" : record.text;
  const citations = $("citations");
  clear(citations);
  record.citations.forEach((c, i) => {
    const item = document.createElement("li");
    const link = document.createElement("button");
    link.type = "button";
    link.className = "citation";
    link.dataset.index = String(i);
    link.textContent = "“" + c.quote.trim() + "”";
    link.addEventListener("click", () => showCitation(record, c));
    item.appendChild(link);
    const where = document.createElement("span");
    where.className = "where";
    where.textContent = " " + (c.source || c.doc_id);
    item.appendChild(where);
    citations.appendChild(item);
  });
  if (!record.citations.length) {
    const item = document.createElement("li");
    item.textContent = "none";
    citations.appendChild(item);
  }
  const sources = $("sources");
  clear(sources);
  for (const s of record.sources) {
    const item = document.createElement("li");
    item.textContent = `${s.title || s.source} (score ${s.score.toFixed(2)}): ${s.text.slice(0, 200)}`;
    sources.appendChild(item);
  }
  $("timings").textContent = Object.entries(record.timings).map(([k, v]) => `${k} ${v.toFixed(2)}s`).join(", ");
}

// The cited segment with the quote highlighted: from the answer's sources, or (should they not hold it) from the
// document itself.
async function showCitation(record, c) {
  let text = null, start = 0, title = c.source, section = "";
  const s = record.sources.find((x) => x.seg_id === c.seg_id);
  if (s && s.text.slice(c.char_start - s.char_start, c.char_end - s.char_start) === c.quote) {
    text = s.text; start = s.char_start; title = s.title || s.source; section = s.section;
  } else {
    const response = await fetch("/v1/documents/" + encodeURIComponent(c.doc_id), { headers: headers() });
    if (!response.ok) {
      setStatus(`Error ${response.status}: ${await errorText(response)}`, true);
      return;
    }
    const doc = await response.json();
    const seg = doc.segments.find((x) => x.char_start <= c.char_start && c.char_end <= x.char_end);
    text = seg ? seg.text : doc.text; start = seg ? seg.char_start : 0; title = doc.title || doc.source;
  }
  $("source-title").textContent = title;
  $("source-where").textContent = `${c.source || c.doc_id}${section ? " — " + section : ""}, characters ` +
    `${c.char_start}–${c.char_end}`;
  const segment = $("segment");
  clear(segment);
  const a = c.char_start - start, b = c.char_end - start;
  segment.appendChild(document.createTextNode(text.slice(0, a)));
  const mark = document.createElement("mark");
  mark.textContent = text.slice(a, b);
  segment.appendChild(mark);
  segment.appendChild(document.createTextNode(text.slice(b)));
  $("source-view").hidden = false;
  mark.scrollIntoView({ block: "nearest" });
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem("ragless-api-key") || "";
  $("api-key").addEventListener("change", () => sessionStorage.setItem("ragless-api-key", $("api-key").value));
  $("ask-form").addEventListener("submit", ask);
});
