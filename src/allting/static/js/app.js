// Behaviour shared by every page (no inline scripts: the CSP forbids them).
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }
  window.AlltingCsrf = csrfToken;

  // A JSON API error in the page's language: a message with values (a size limit, a date) through
  // its translated template, else the translated message of its code, else the message as sent.
  var errorMessages = null;
  var errorTemplates = null;
  function bodyJson(name, empty) {
    try { return JSON.parse(document.body.getAttribute(name) || empty); } catch (e) { return JSON.parse(empty); }
  }
  function localNumber(value) {
    if (!/^(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$/.test(value)) return value;
    var number = Number(value.replace(/,/g, ""));
    return isNaN(number) ? value : number.toLocaleString(document.documentElement.lang || undefined,
      { maximumFractionDigits: 20 });
  }
  window.AlltingMessageText = function (message) {
    if (errorTemplates === null) errorTemplates = bodyJson("data-error-templates", "[]");
    if (!message) return null;
    for (var i = 0; i < errorTemplates.length; i++) {
      var template = errorTemplates[i];
      var match = new RegExp(template.pattern).exec(message);
      if (!match) continue;
      var values = {};
      template.names.forEach(function (name, index) { values[name] = localNumber(match[index + 1]); });
      return template.text.replace(/%\((\w+)\)[sd]/g, function (whole, name) {
        return Object.prototype.hasOwnProperty.call(values, name) ? values[name] : whole;
      });
    }
    return null;
  };
  window.AlltingErrorText = function (error, fallback) {
    if (errorMessages === null) errorMessages = bodyJson("data-error-messages", "{}");
    error = error || {};
    return window.AlltingMessageText(error.message) || (error.code && errorMessages[error.code]) || error.message ||
      (fallback === undefined ? "" : String(fallback));
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
