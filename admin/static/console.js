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
