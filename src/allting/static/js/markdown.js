// Safe markdown for model output and documents: marked for the syntax, raw HTML shown as text,
// then DOMPurify with no images, frames, scripts, styles, forms or event handlers; links only to
// http(s)/mailto and opened without referrer. Nothing in an answer can load an external resource.
(function () {
  "use strict";

  var FORBID_TAGS = ["img", "image", "picture", "source", "video", "audio", "track", "iframe", "frame",
    "frameset", "object", "embed", "script", "style", "link", "meta", "base", "form", "input", "button",
    "select", "textarea", "svg", "math", "template", "noscript"];
  var FORBID_ATTR = ["style", "src", "srcset", "srcdoc", "background", "poster", "action", "formaction",
    "xlink:href", "ping", "target"];
  var SAFE_URL = /^(?:https?:|mailto:|#)/i;

  function escapeHtml(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  var configured = false;
  function configure() {
    if (configured || !window.marked || !window.DOMPurify) return configured;
    window.marked.use({
      gfm: true,
      breaks: false,
      renderer: {
        // Raw HTML in model output is text, never markup.
        html: function (token) { return escapeHtml(token.text || token.raw || ""); },
        // An image becomes its description: nothing is fetched.
        image: function (token) { return escapeHtml(token.text || token.title || ""); }
      }
    });
    window.DOMPurify.addHook("afterSanitizeAttributes", function (node) {
      if (node.hasAttribute && node.hasAttribute("href")) {
        var href = node.getAttribute("href") || "";
        if (!SAFE_URL.test(href.trim())) {
          node.removeAttribute("href");
        } else if (node.tagName === "A" && !/^#/.test(href)) {
          node.setAttribute("rel", "noopener noreferrer nofollow");
          node.setAttribute("target", "_blank");
        }
      }
    });
    configured = true;
    return true;
  }

  function toSafeHtml(text) {
    if (!configure()) return escapeHtml(text).replace(/\n/g, "<br>");
    var html = window.marked.parse(String(text || ""), { async: false });
    return window.DOMPurify.sanitize(html, {
      FORBID_TAGS: FORBID_TAGS,
      FORBID_ATTR: FORBID_ATTR,
      ALLOW_DATA_ATTR: false,
      ALLOW_UNKNOWN_PROTOCOLS: false
    });
  }

  function render(element, text) {
    element.innerHTML = toSafeHtml(text);
  }

  window.AlltingMarkdown = { render: render, toSafeHtml: toSafeHtml };
})();
