// Entry point of admin/static/codemirror.min.js (see admin/static/CODEMIRROR.md): the CodeMirror 6
// pieces the console's JSON editor (admin/static/editor.js) uses, exposed as window.FifoqCodeMirror.
import { EditorState } from "@codemirror/state";
import {
  EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter, drawSelection,
  highlightSpecialChars, placeholder
} from "@codemirror/view";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { bracketMatching, foldGutter, foldKeymap, indentOnInput, syntaxHighlighting, defaultHighlightStyle } from "@codemirror/language";
import { closeBrackets, closeBracketsKeymap } from "@codemirror/autocomplete";
import { searchKeymap, highlightSelectionMatches } from "@codemirror/search";
import { json, jsonParseLinter } from "@codemirror/lang-json";
import { linter, lintGutter, forEachDiagnostic } from "@codemirror/lint";

window.FifoqCodeMirror = {
  EditorState, EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter, drawSelection,
  highlightSpecialChars, placeholder, defaultKeymap, history, historyKeymap, indentWithTab, bracketMatching,
  foldGutter, foldKeymap, indentOnInput, syntaxHighlighting, defaultHighlightStyle, closeBrackets,
  closeBracketsKeymap, searchKeymap, highlightSelectionMatches, json, jsonParseLinter, linter, lintGutter,
  forEachDiagnostic
};
