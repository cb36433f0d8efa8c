// kiln's dashboard: refresh [data-poll] fragments every second; ask before [data-confirm] forms.
(function () {
  function poll(el) {
    fetch(el.dataset.poll, {credentials: "same-origin", headers: {"X-Kiln-Fragment": "1"}})
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { el.innerHTML = html; })
      .catch(function () {})
      .finally(function () { setTimeout(function () { poll(el); }, 1000); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(function (el) { setTimeout(function () { poll(el); }, 1000); });
  });
  document.addEventListener("submit", function (e) {
    var text = e.target.dataset && e.target.dataset.confirm;
    if (text && !window.confirm(text)) { e.preventDefault(); }
  });
})();
