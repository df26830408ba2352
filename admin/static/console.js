// Progressive enhancement only: every action also works (and is checked server-side) without it.
//
// Confirmation: a form with data-confirm="question" (or whose selected <option> carries one) asks
// in a dialog before it is sent; once accepted, its <input data-confirm-input> is set to "yes", so
// the server does not ask again on its own confirmation page (what a browser without script gets).
document.addEventListener("submit", function (event) {
  var form = event.target;
  var option = form.querySelector("select option:checked[data-confirm]");
  var question = option ? option.getAttribute("data-confirm") : form.getAttribute("data-confirm");
  if (!question) {
    return;
  }
  if (!window.confirm(question)) {
    event.preventDefault();
    return;
  }
  var input = form.querySelector("input[data-confirm-input]");
  if (input) {
    input.value = "yes";
  }
});

// Tables of class "cards" become one card per row on a phone (console.css): each cell is labelled
// with its column's heading, also in rows added later (pages that update themselves). Without
// script, those tables scroll sideways in their own box like the others.
(function () {
  function label(table) {
    var heads = [];
    var row = table.tHead && table.tHead.rows[0];
    if (!row) { return; }
    for (var i = 0; i < row.cells.length; i++) {
      for (var n = 0; n < (row.cells[i].colSpan || 1); n++) { heads.push(row.cells[i].textContent.trim()); }
    }
    for (var b = 0; b < table.tBodies.length; b++) {
      var rows = table.tBodies[b].rows;
      for (var r = 0; r < rows.length; r++) {
        var col = 0;
        for (var c = 0; c < rows[r].cells.length; c++) {
          var cell = rows[r].cells[c];
          var span = cell.colSpan || 1;
          if (!cell.hasAttribute("data-label")) {
            cell.setAttribute("data-label", heads.slice(col, col + span).filter(Boolean).join(" / "));
          }
          col += span;
        }
      }
    }
    table.classList.add("labelled");
  }

  document.addEventListener("DOMContentLoaded", function () {
    var tables = document.querySelectorAll("table.cards");
    for (var i = 0; i < tables.length; i++) {
      label(tables[i]);
      if (window.MutationObserver) {
        new MutationObserver(function (changes) { label(changes[0].target.closest("table")); })
          .observe(tables[i], { childList: true, subtree: true });
      }
    }
  });
})();
