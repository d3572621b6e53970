// The page talks to the same JSON API as any client: GET /info, POST /translate (alignment: true).
"use strict";

const $ = (id) => document.getElementById(id);
let last = null; // the latest answer: {translations: [...]}

async function loadInfo() {
  try {
    const info = await (await fetch("/info")).json();
    $("pair").textContent = `${info.src_lang} → ${info.tgt_lang}`;
    $("description").textContent = info.description.replaceAll("|", "|\u200b"); // line breaks at the separators
    $("beam_size").value = info.search.beam_size;
    $("length_penalty").value = info.search.length_penalty;
  } catch (e) {
    $("description").textContent = "could not read /info: " + e;
  }
}

function settings() {
  const num = (id) => Number($(id).value);
  const lines = $("source").value.split("\n");
  const body = { text: lines, alignment: true };
  if ($("mode").value === "sample") {
    Object.assign(body, { sample: true, temperature: num("temperature"), top_k: num("top_k"), seed: num("seed") });
  } else {
    Object.assign(body, { beam_size: num("beam_size"), nbest: num("nbest"), length_penalty: num("length_penalty") });
  }
  return body;
}

async function translate() {
  const button = $("translate");
  $("error").hidden = true;
  button.disabled = true;
  $("status").textContent = "translating…";
  const started = performance.now();
  try {
    const response = await fetch("/translate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(settings()),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(`${response.status}: ${answer.error || response.statusText}`);
    last = answer;
    $("status").textContent = `${answer.translations.length} line(s) in ${Math.round(performance.now() - started)} ms`;
    const first = answer.translations.findIndex((t) => t.translation !== "");
    showAll(Math.max(first, 0));
  } catch (e) {
    $("error").textContent = e.message;
    $("error").hidden = false;
    $("status").textContent = "";
  } finally {
    button.disabled = false;
  }
}

function showAll(chosen) {
  const list = $("translations");
  list.replaceChildren();
  last.translations.forEach((t, i) => {
    const li = document.createElement("li");
    li.className = "translation" + (i === chosen ? " chosen" : "");
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = t.translation;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `  (${t.score.toFixed(3)})`;
    li.append(text, score);
    li.addEventListener("click", () => showAll(i));
    list.append(li);
  });
  $("chosen-line").textContent = chosen + 1;
  showNbest(last.translations[chosen]);
  showHeatmap(last.translations[chosen]);
  $("results").hidden = false;
}

function showNbest(t) {
  const body = $("nbest-list").tBodies[0];
  body.replaceChildren();
  t.nbest.forEach((h, r) => {
    const row = body.insertRow();
    row.insertCell().textContent = r + 1;
    const score = row.insertCell();
    score.className = "num";
    score.textContent = h.normalized_score.toFixed(3);
    const logProb = row.insertCell();
    logProb.className = "num";
    logProb.textContent = h.score.toFixed(3);
    row.insertCell().textContent = h.translation;
  });
}

function showHeatmap(t) {
  // Rows: target pieces (+ </s> when the hypothesis finished); columns: source pieces + </s>.
  const table = $("heatmap");
  table.replaceChildren();
  if (!t.attention || t.attention.length === 0) {
    const empty = t.src_pieces && t.src_pieces.length === 0;
    table.createCaption().textContent = empty ? "(empty line)" : "(this model has no attention)";
    return;
  }
  const src = [...t.src_pieces, "</s>"];
  const tgt = t.finished ? [...t.tgt_pieces, "</s>"] : t.tgt_pieces;
  const head = table.createTHead().insertRow();
  head.append(document.createElement("th"));
  for (const piece of src) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = piece;
    head.append(th);
  }
  const body = table.createTBody();
  t.attention.forEach((weights, j) => {
    const row = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = tgt[j];
    row.append(th);
    weights.forEach((w, i) => {
      const cell = row.insertCell();
      cell.className = "cell";
      cell.style.background = `rgba(36, 86, 201, ${w.toFixed(3)})`; // weight 0 = white, 1 = full blue
      cell.title = `${tgt[j]} ← ${src[i]}: ${w.toFixed(3)}`;
    });
  });
}

$("mode").addEventListener("change", () => {
  const sampling = $("mode").value === "sample";
  document.querySelectorAll(".beam").forEach((e) => (e.hidden = sampling));
  document.querySelectorAll(".sample").forEach((e) => (e.hidden = !sampling));
});
$("mode").dispatchEvent(new Event("change"));
$("translate").addEventListener("click", translate);
$("source").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) translate();
});
loadInfo();
