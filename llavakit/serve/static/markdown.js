// A small markdown renderer for model replies that builds DOM nodes from text — it never parses
// HTML (no innerHTML), so markup in a reply ("<img onerror=...>", "<script>") is shown as text and
// cannot run. Written here rather than vendoring marked + DOMPurify: the page has no build step and
// needs only what chat replies use — paragraphs, headings, lists, fenced and inline code, bold,
// italics and http(s) links.
"use strict";

const Markdown = (() => {
  const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(\*[^*\s][^*\n]*\*)|(\[[^\]\n]+\]\([^)\s]+\))/;

  function inline(parent, text) {
    while (text) {
      const m = INLINE.exec(text);
      if (!m) { parent.appendChild(document.createTextNode(text)); return; }
      if (m.index) parent.appendChild(document.createTextNode(text.slice(0, m.index)));
      const token = m[0];
      if (m[1]) {
        const code = document.createElement("code");
        code.textContent = token.slice(1, -1);
        parent.appendChild(code);
      } else if (m[2] || m[3]) {
        const el = document.createElement(m[2] ? "strong" : "em");
        inline(el, m[2] ? token.slice(2, -2) : token.slice(1, -1));
        parent.appendChild(el);
      } else {
        const cut = token.indexOf("](");
        const label = token.slice(1, cut), href = token.slice(cut + 2, -1);
        if (/^https?:\/\//i.test(href)) {
          const a = document.createElement("a");
          a.href = href;
          a.target = "_blank";
          a.rel = "noopener noreferrer";
          a.textContent = label;
          parent.appendChild(a);
        } else {
          parent.appendChild(document.createTextNode(token));  // other schemes (javascript:, data:) stay text
        }
      }
      text = text.slice(m.index + token.length);
    }
  }

  function render(container, text) {
    container.textContent = "";
    const lines = text.split("\n");
    let para = null, list = null;
    const close = () => { para = null; list = null; };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      if (line.startsWith("```")) {  // fenced code, until the closing fence (or the end, while streaming)
        close();
        const pre = document.createElement("pre"), code = document.createElement("code");
        const body = [];
        for (i++; i < lines.length && !lines[i].startsWith("```"); i++) body.push(lines[i]);
        code.textContent = body.join("\n");
        pre.appendChild(code);
        container.appendChild(pre);
        continue;
      }
      const heading = /^(#{1,4})\s+(.*)$/.exec(line);
      const bullet = /^\s*[-*+]\s+(.*)$/.exec(line);
      const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
      if (!line.trim()) { close(); continue; }
      if (heading) {
        close();
        const h = document.createElement("h" + (heading[1].length + 2));
        inline(h, heading[2]);
        container.appendChild(h);
      } else if (bullet || numbered) {
        const tag = bullet ? "UL" : "OL";
        if (!list || list.tagName !== tag) {
          para = null;
          list = document.createElement(tag);
          const first = /^\s*(\d+)/.exec(line);
          if (numbered && first && first[1] !== "1") list.start = Number(first[1]);  // "2." after a blank line
          container.appendChild(list);
        }
        const li = document.createElement("li");
        inline(li, (bullet || numbered)[1]);
        list.appendChild(li);
      } else {
        list = null;
        if (!para) {
          para = document.createElement("p");
          container.appendChild(para);
        } else {
          para.appendChild(document.createElement("br"));
        }
        inline(para, line);
      }
    }
  }

  return { render };
})();
