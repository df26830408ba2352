// The console's JSON editor: CodeMirror 6 (codemirror.min.js, see CODEMIRROR.md) on every
// <textarea class="json-editor">: line numbers, bracket matching, folding, a syntax check that
// points at the error (line and column, underlined in the text) and a Format button.
// Progressive enhancement: the textarea stays in the form (hidden) and is kept in sync, so the
// form posts the same field with or without this script; the server checks everything again.
(function () {
  "use strict";
  var CM = window.FifoqCodeMirror;
  if (!CM) { return; }
  var parseLinter = CM.jsonParseLinter();
  // The page's stylesheets do not reach into the shadow root: the editor's look is set here.
  var THEME = CM.EditorView.theme({
    "&": { maxHeight: "28rem", fontSize: "13px", backgroundColor: "#fff" },
    ".cm-scroller": { overflow: "auto", fontFamily: "ui-monospace, SFMono-Regular, Menlo, monospace" },
    ".cm-gutters": { backgroundColor: "#f1f3f5", color: "#6b7280", borderRight: "1px solid #d9dde3" },
    "&.cm-focused": { outline: "2px solid #9aa3af" }
  });

  // "Expected ',' or '}' after property value in JSON at position 25 (line 3 column 5)" -> the reason only.
  function reason(message) {
    return String(message).replace(/\s+in JSON at position \d+.*$/, "").replace(/\s+at position \d+.*$/, "");
  }

  function check(view, status) {
    var text = view.state.doc.toString();
    if (!text.trim()) {
      status.textContent = "Empty: write a JSON value.";
      status.className = "editor-status err";
      return false;
    }
    var found = parseLinter(view);
    if (!found.length) {
      status.textContent = "Valid JSON (" + view.state.doc.lines + " lines).";
      status.className = "editor-status ok";
      return true;
    }
    var pos = Math.min(found[0].from, view.state.doc.length);
    var line = view.state.doc.lineAt(pos);
    status.textContent = "Syntax error at line " + line.number + ", column " + (pos - line.from + 1) + ": " + reason(found[0].message);
    status.className = "editor-status err";
    status.setAttribute("data-line", String(line.number));
    status.setAttribute("data-column", String(pos - line.from + 1));
    status.setAttribute("data-pos", String(pos));
    return false;
  }

  function mount(textarea) {
    if (textarea.getAttribute("data-editor-mounted")) { return; }
    textarea.setAttribute("data-editor-mounted", "1");
    var initial = textarea.value;
    var bar = document.createElement("div");
    bar.className = "editor-bar";
    var format = document.createElement("button");
    format.type = "button";
    format.textContent = "Format";
    format.className = "editor-format";
    var status = document.createElement("span");
    status.className = "editor-status";
    status.setAttribute("role", "status");
    status.setAttribute("aria-live", "polite");
    bar.appendChild(format);
    bar.appendChild(status);
    var host = document.createElement("div");
    host.className = "editor-host";
    textarea.parentNode.insertBefore(bar, textarea);
    textarea.parentNode.insertBefore(host, textarea);
    textarea.hidden = true;
    var region = textarea.closest("[data-live-region]");
    var timer = null;

    // In a shadow root: CodeMirror then styles itself with a constructed stylesheet (adopted by
    // the shadow root) instead of inserting a <style> element, which the console's CSP forbids.
    var shadow = host.attachShadow({ mode: "open" });
    var view = new CM.EditorView({
      parent: shadow,
      root: shadow,
      state: CM.EditorState.create({
        doc: initial,
        extensions: [
          CM.lineNumbers(), CM.highlightActiveLineGutter(), CM.highlightSpecialChars(), CM.history(), CM.foldGutter(),
          CM.drawSelection(), CM.indentOnInput(), CM.bracketMatching(), CM.closeBrackets(), CM.highlightActiveLine(),
          CM.highlightSelectionMatches(), CM.syntaxHighlighting(CM.defaultHighlightStyle, { fallback: true }),
          CM.json(), CM.linter(parseLinter, { delay: 300 }), CM.lintGutter(), THEME,
          CM.keymap.of([].concat(CM.closeBracketsKeymap, CM.defaultKeymap, CM.searchKeymap, CM.historyKeymap,
                                 CM.foldKeymap, [CM.indentWithTab])),
          CM.EditorView.contentAttributes.of({ "aria-label": textarea.getAttribute("aria-label") || "JSON editor" }),
          CM.EditorView.updateListener.of(function (update) {
            if (!update.docChanged) { return; }
            textarea.value = update.state.doc.toString();
            // A live page leaves a region alone while the operator is editing in it (live.js).
            if (region) {
              if (textarea.value !== initial) { region.setAttribute("data-live-busy", "1"); }
              else { region.removeAttribute("data-live-busy"); }
            }
            window.clearTimeout(timer);
            timer = window.setTimeout(function () { check(view, status); }, 300);
          })
        ]
      })
    });
    host.editorView = view;
    check(view, status);

    format.addEventListener("click", function () {
      var text = view.state.doc.toString();
      try {
        var pretty = JSON.stringify(JSON.parse(text), null, 2);
        view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: pretty } });
        check(view, status);
      } catch (err) {
        check(view, status);
        var pos = parseInt(status.getAttribute("data-pos") || "0", 10);
        view.dispatch({ selection: { anchor: pos }, scrollIntoView: true });
      }
      view.focus();
    });
    if (textarea.form) {
      textarea.form.addEventListener("submit", function () { textarea.value = view.state.doc.toString(); });
    }
  }

  function mountAll() {
    Array.prototype.forEach.call(document.querySelectorAll("textarea.json-editor"), mount);
  }

  mountAll();
  document.addEventListener("fifoq:live-updated", mountAll);
})();
