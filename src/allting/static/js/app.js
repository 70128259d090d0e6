// Behaviour shared by every page (no inline scripts: the CSP forbids them).
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }
  window.AlltingCsrf = csrfToken;

  // A JSON API error in the page's language: known codes have a translated message.
  var errorMessages = null;
  window.AlltingErrorText = function (error, fallback) {
    if (errorMessages === null) {
      try { errorMessages = JSON.parse(document.body.getAttribute("data-error-messages") || "{}"); }
      catch (e) { errorMessages = {}; }
    }
    error = error || {};
    return (error.code && errorMessages[error.code]) || error.message || (fallback === undefined ? "" : String(fallback));
  };

  // htmx requests carry the CSRF token of the page.
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrfToken();
  });

  // Forms with data-confirm ask first (deleting, removing, revoking).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // Render markdown sources outside the chat too (documents, prompts).
  document.addEventListener("DOMContentLoaded", function () {
    if (window.location.hash === "#main") {
      var main = document.getElementById("main");
      if (main) main.focus();
    }
  });
})();
