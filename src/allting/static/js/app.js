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
  // How many seconds a refused request (429 too many, 503 unavailable) asks to wait: its Retry-After
  // header (seconds or a date), else a `retry_after` or `resets_at` in the error's details; else null.
  window.AlltingRetrySeconds = function (response, error) {
    if (!response || (response.status !== 429 && response.status !== 503)) return null;
    var seconds = null;
    var header = response.headers && response.headers.get("Retry-After");
    if (header && /^\s*\d+\s*$/.test(header)) seconds = parseInt(header, 10);
    else if (header && !isNaN(Date.parse(header))) seconds = (Date.parse(header) - Date.now()) / 1000;
    var details = (error && error.details) || {};
    if (seconds === null && typeof details === "object" && !Array.isArray(details)) {
      if (typeof details.retry_after === "number") seconds = details.retry_after;
      else if (details.resets_at && !isNaN(Date.parse(details.resets_at))) {
        seconds = (Date.parse(details.resets_at) - Date.now()) / 1000;
      }
    }
    return seconds === null || isNaN(seconds) ? null : Math.max(1, Math.ceil(seconds));
  };
  // "Try again in 30 seconds." in the page's language; minutes from two minutes on; nothing for waits
  // over two hours (a monthly budget, whose message says when it resets).
  window.AlltingWaitText = function (seconds) {
    if (seconds === null || seconds === undefined || seconds > 7200) return "";
    var body = document.body;
    if (seconds < 120) {
      return (seconds === 1 ? body.getAttribute("data-t-wait-second") : body.getAttribute("data-t-wait-seconds") || "")
        .replace("{seconds}", localNumber(String(seconds)));
    }
    var minutes = Math.ceil(seconds / 60);
    return (body.getAttribute("data-t-wait-minutes") || "").replace("{minutes}", localNumber(String(minutes)));
  };
  // The error in the page's language; given the response, a rate limit also says how long to wait.
  window.AlltingErrorText = function (error, fallback, response) {
    if (errorMessages === null) errorMessages = bodyJson("data-error-messages", "{}");
    error = error || {};
    var text = window.AlltingMessageText(error.message) || (error.code && errorMessages[error.code]) || error.message ||
      (fallback === undefined ? "" : String(fallback));
    var wait = window.AlltingWaitText(window.AlltingRetrySeconds(response, error));
    if (!wait) return text;
    // "Wait a moment" says less than the wait itself: a plain rate limit gets a sentence without it.
    if (error.code === "rate_limited") text = document.body.getAttribute("data-t-too-many") || text;
    return text ? text + " " + wait : wait;
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
