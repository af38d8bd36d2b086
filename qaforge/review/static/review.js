// Keyboard review of the server-rendered items. Each verdict or edit is POSTed at once; the page shows
// "saved" only after the server has fsync'd the journal line, so what it says is saved survives a kill.
(function () {
  "use strict";
  const items = Array.from(document.querySelectorAll("article.item"));
  const status = document.getElementById("status");
  const progress = document.getElementById("progress");
  let current = 0;

  function say(text, bad) {
    status.textContent = text;
    status.className = "status " + (bad ? "bad" : "ok");
  }

  function select(index) {
    if (!items.length) return;
    current = Math.max(0, Math.min(items.length - 1, index));
    items.forEach((el, i) => el.classList.toggle("current", i === current));
    items[current].scrollIntoView({ block: "nearest" });
  }

  async function post(item, path, body) {
    const response = await fetch("/api/items/" + encodeURIComponent(item.dataset.id) + path, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(typeof data.detail === "string" ? data.detail : response.statusText);
    const r = data.results;
    progress.textContent = r.sample_reviewed + " / " + r.sample_size + " reviewed";
    return data.item;
  }

  async function setVerdict(index, verdict) {
    const item = items[index];
    say("saving…");
    try {
      const saved = await post(item, "/verdict", { verdict: verdict });
      item.dataset.verdict = saved.verdict || "";
      item.querySelectorAll("button.verdict").forEach(
        (b) => b.classList.toggle("chosen", b.dataset.verdict === saved.verdict));
      say("saved: " + (saved.verdict || "cleared"));
      if (verdict && index === current) select(current + 1);
    } catch (err) {
      say("NOT saved: " + err.message, true);
    }
  }

  function openEditor(item) {
    const form = item.querySelector("form.editor");
    form.hidden = false;
    form.elements.answer.focus();
  }

  function closeEditor(item) {
    const form = item.querySelector("form.editor");
    form.hidden = true;
    form.elements.question.value = item.querySelector(".question").textContent;
    form.elements.answer.value = item.querySelector(".answer").textContent;
    item.focus();
  }

  async function saveEdit(item) {
    const form = item.querySelector("form.editor");
    say("saving…");
    try {
      const saved = await post(item, "/edit",
        { question: form.elements.question.value, answer: form.elements.answer.value });
      item.querySelector(".question").textContent = saved.question;
      item.querySelector(".answer").textContent = saved.answer;
      item.querySelector(".edited-badge").hidden = !saved.edited;
      form.hidden = true;
      item.focus();
      say("saved: edit");
    } catch (err) {
      say("NOT saved: " + err.message, true);
    }
  }

  items.forEach((item, index) => {
    item.querySelectorAll("button.verdict").forEach((b) =>
      b.addEventListener("click", () => { select(index); setVerdict(index, b.dataset.verdict); }));
    const form = item.querySelector("form.editor");
    form.addEventListener("submit", (ev) => { ev.preventDefault(); saveEdit(item); });
    form.querySelector(".cancel").addEventListener("click", () => closeEditor(item));
    item.addEventListener("click", (ev) => { if (ev.target.tagName !== "TEXTAREA") select(index); });
  });

  const keys = { a: "accurate", 1: "accurate", i: "inaccurate", 2: "inaccurate", o: "off-topic", 3: "off-topic" };
  document.addEventListener("keydown", (ev) => {
    const inEditor = ev.target.tagName === "TEXTAREA";
    if (inEditor) {
      const item = ev.target.closest("article.item");
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); saveEdit(item); }
      else if (ev.key === "Escape") { ev.preventDefault(); closeEditor(item); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !items.length) return;
    if (ev.key === "j" || ev.key === "ArrowDown") { ev.preventDefault(); select(current + 1); }
    else if (ev.key === "k" || ev.key === "ArrowUp") { ev.preventDefault(); select(current - 1); }
    else if (ev.key in keys) { ev.preventDefault(); setVerdict(current, keys[ev.key]); }
    else if (ev.key === "u" || ev.key === "0") { ev.preventDefault(); setVerdict(current, null); }
    else if (ev.key === "e") { ev.preventDefault(); openEditor(items[current]); }
  });

  // Open each source box at the cited span (else the first shared run), not at the chunk's heading.
  items.forEach((item) => {
    const box = item.querySelector(".chunk-text");
    const anchor = box && (box.querySelector(".src") || box.querySelector("mark"));
    if (anchor) box.scrollTop = Math.max(0, anchor.offsetTop - box.offsetTop - 24);
  });

  // Resume where the review stopped: the first item without a verdict.
  const firstOpen = items.findIndex((el) => !el.dataset.verdict);
  select(firstOpen < 0 ? 0 : firstOpen);
})();
