// The chat page: streamed answers over fetch + ReadableStream (server-sent events from
// POST /api/v1/conversations/), stop, model choice, attachments, citations and feedback.
(function () {
  "use strict";

  var chat = document.getElementById("chat");
  if (!chat) return;
  var t = function (key) { return chat.getAttribute("data-t-" + key) || key; };
  var messages = document.getElementById("messages");
  var form = document.getElementById("composer");
  var question = document.getElementById("question");
  var sendButton = document.getElementById("send");
  var stopButton = document.getElementById("stop");
  var modelPicker = document.getElementById("model-picker");
  var attach = document.getElementById("attach");
  var attachments = document.getElementById("attachments");
  var status = document.getElementById("chat-status");
  var controller = null;
  var fileIds = [];

  function md() { return window.AlltingMarkdown; }

  function renderSources() {
    Array.prototype.forEach.call(document.querySelectorAll(".md-source"), function (source) {
      var target = source.parentNode.querySelector(".markdown");
      if (target && md()) md().render(target, source.textContent);
    });
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function announce(text) {
    if (!status) return;
    status.textContent = "";
    window.setTimeout(function () { status.textContent = text; }, 50);
  }

  function headers() {
    return { "Content-Type": "application/json", "X-CSRF-Token": window.AlltingCsrf() };
  }

  // Citations: numbered chips that open their passage.
  function citationBlock(citations) {
    var group = el("div", "citations");
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", t("sources"));
    var passages = [];
    citations.forEach(function (cite, index) {
      var id = "p-live-" + Date.now() + "-" + index;
      var chip = el("button", "chip", String(cite.ref));
      chip.type = "button";
      chip.setAttribute("aria-expanded", "false");
      chip.setAttribute("aria-controls", id);
      var hidden = el("span", "visually-hidden", " " + t("source") + ": " + (cite.title || ""));
      chip.appendChild(hidden);
      group.appendChild(chip);
      var passage = el("div", "passage");
      passage.id = id;
      passage.hidden = true;
      var title = el("p", "passage-title");
      var strong = el("strong", null, "[" + cite.ref + "] " + (cite.title || ""));
      title.appendChild(strong);
      if (cite.location) title.appendChild(document.createTextNode(" · " + cite.location));
      passage.appendChild(title);
      if (cite.url && /^https?:\/\//i.test(cite.url)) {
        var p = el("p");
        var link = el("a", null, cite.url);
        link.href = cite.url;
        link.rel = "noopener noreferrer nofollow";
        link.target = "_blank";
        p.appendChild(link);
        passage.appendChild(p);
      }
      passage.appendChild(el("blockquote", null, cite.text || ""));
      passages.push(passage);
    });
    passages.forEach(function (p) { group.appendChild(p); });
    return group;
  }

  messages.addEventListener("click", function (event) {
    var chip = event.target.closest(".chip");
    if (chip) {
      var passage = document.getElementById(chip.getAttribute("aria-controls"));
      var open = chip.getAttribute("aria-expanded") === "true";
      chip.setAttribute("aria-expanded", open ? "false" : "true");
      if (passage) passage.hidden = open;
      return;
    }
    var thumb = event.target.closest("[data-feedback]");
    if (thumb) sendFeedback(thumb);
  });

  function sendFeedback(button) {
    var turn = button.closest(".turn");
    var conversationId = chat.getAttribute("data-conversation-id");
    var messageId = turn && turn.getAttribute("data-message-id");
    if (!conversationId || !messageId) return;
    var value = parseInt(button.getAttribute("data-feedback"), 10);
    fetch("/api/v1/conversations/" + conversationId + "/messages/" + messageId + "/feedback", {
      method: "POST", headers: headers(), credentials: "same-origin",
      body: JSON.stringify({ value: value })
    }).then(function (response) {
      if (!response.ok) return;
      Array.prototype.forEach.call(turn.querySelectorAll("[data-feedback]"), function (b) {
        b.setAttribute("aria-pressed", b === button ? "true" : "false");
      });
      announce(t("thanks"));
    });
  }

  function feedbackButtons() {
    var group = el("span", "feedback");
    group.setAttribute("role", "group");
    [["1", t("good")], ["-1", t("bad")]].forEach(function (spec) {
      var b = el("button", "icon-button", spec[1]);
      b.type = "button";
      b.setAttribute("data-feedback", spec[0]);
      b.setAttribute("aria-pressed", "false");
      group.appendChild(b);
    });
    return group;
  }

  function newTurn(text) {
    var intro = document.getElementById("chat-intro");
    if (intro) intro.remove();
    var turn = el("li", "turn");
    var q = el("div", "bubble question");
    q.appendChild(el("span", "who", t("you")));
    q.appendChild(el("p", "question-text", text));
    var a = el("div", "bubble answer");
    a.appendChild(el("span", "who", t("assistant")));
    var body = el("div", "markdown streaming");
    body.setAttribute("aria-live", "polite");
    body.setAttribute("aria-busy", "true");
    a.appendChild(body);
    var meta = el("div", "answer-meta");
    a.appendChild(meta);
    turn.appendChild(q);
    turn.appendChild(a);
    messages.appendChild(turn);
    turn.scrollIntoView({ block: "end" });
    return { turn: turn, answer: a, body: body, meta: meta };
  }

  function setStreaming(on) {
    sendButton.disabled = on;
    stopButton.hidden = !on;
    chat.classList.toggle("is-streaming", on);
  }

  function addToList(id, title) {
    var list = document.getElementById("conversation-items");
    if (!list) return;
    var empty = list.querySelector(".hint");
    if (empty) empty.remove();
    var item = el("li");
    var link = el("a", null, title);
    link.href = "/?c=" + id;
    link.setAttribute("aria-current", "page");
    Array.prototype.forEach.call(list.querySelectorAll("[aria-current]"), function (a) {
      a.removeAttribute("aria-current");
    });
    item.appendChild(link);
    list.insertBefore(item, list.firstChild);
  }

  // What the page shows of a conversation once it exists: its title and the rename and delete forms.
  function showConversation(id, title) {
    var heading = document.getElementById("chat-title");
    var actions = document.getElementById("conversation-actions");
    if (heading) {
      heading.textContent = " · " + title;
      heading.hidden = false;
    }
    if (actions) {
      document.getElementById("rename-form").setAttribute("action", "/conversations/" + id + "/rename");
      document.getElementById("delete-form").setAttribute("action", "/conversations/" + id + "/delete");
      document.getElementById("rename-title").value = title;
      actions.hidden = false;
    }
  }

  function parseEvents(buffer, onEvent) {
    var parts = buffer.split("\n\n");
    var rest = parts.pop();
    parts.forEach(function (block) {
      var name = "message";
      var data = "";
      block.split("\n").forEach(function (line) {
        if (line.indexOf("event:") === 0) name = line.slice(6).trim();
        else if (line.indexOf("data:") === 0) data += line.slice(5).trim();
      });
      if (!data) return;
      try { onEvent(name, JSON.parse(data)); } catch (e) { /* a malformed event is skipped */ }
    });
    return rest;
  }

  function ask(text) {
    var parts = newTurn(text);
    var answer = "";
    var pending = false;
    var finished = false;
    function paint() {
      pending = false;
      if (md()) md().render(parts.body, answer); else parts.body.textContent = answer;
    }
    function schedule() {
      if (!pending) { pending = true; window.requestAnimationFrame(paint); }
    }
    function end(note, isError) {
      if (finished) return;
      finished = true;
      paint();
      parts.body.classList.remove("streaming");
      parts.body.setAttribute("aria-busy", "false");
      if (note) parts.answer.insertBefore(el("p", isError ? "error-text" : "hint", note), parts.meta);
      setStreaming(false);
      controller = null;
      announce(isError ? note : t("done"));
    }

    var conversationId = chat.getAttribute("data-conversation-id");
    var body = { question: text, stream: true, files: fileIds.slice() };
    if (conversationId) body.conversation_id = conversationId;
    else if (chat.getAttribute("data-assistant-id")) body.assistant_id = chat.getAttribute("data-assistant-id");
    if (modelPicker && modelPicker.value) body.model_id = modelPicker.value;
    clearAttachments();
    controller = new AbortController();
    setStreaming(true);
    announce(t("writing"));

    fetch("/api/v1/conversations/", {
      method: "POST", headers: headers(), credentials: "same-origin",
      body: JSON.stringify(body), signal: controller.signal
    }).then(function (response) {
      if (!response.ok) {
        return response.json().catch(function () { return {}; }).then(function (error) {
          end(t("failed") + " " + window.AlltingErrorText(error, response.status, response), true);
        });
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      function onEvent(name, data) {
        if (name === "first_chunk") {
          parts.turn.setAttribute("data-message-id", data.question_id);
          if (!conversationId) {
            conversationId = data.conversation_id;
            chat.setAttribute("data-conversation-id", conversationId);
            window.history.replaceState(null, "", "/?c=" + conversationId);
            var title = data.title || text.slice(0, 80);
            addToList(conversationId, title);
            showConversation(conversationId, title);
          }
        } else if (name === "text") {
          answer += data.answer || "";
          schedule();
        } else if (name === "citations") {
          parts.answer.insertBefore(citationBlock(data.citations || []), parts.meta);
        } else if (name === "done") {
          var model = data.model || {};
          parts.meta.appendChild(el("span", "model-used", t("answered-by") + " " + (model.display_name || model.name || "")));
          parts.meta.appendChild(feedbackButtons());
          end(null, false);
        } else if (name === "error") {
          var seconds = typeof data.retry_after === "number" ? Math.max(1, Math.ceil(data.retry_after)) : null;
          var wait = window.AlltingWaitText(seconds);
          // The busy provider's own sentence ends "try again in a moment", which the wait says better.
          var reason = wait && data.code === "provider_rate_limited"
            ? document.body.getAttribute("data-t-provider-busy")
            : window.AlltingErrorText({ code: data.code, message: data.error }, "");
          end(t("failed") + " " + reason + (wait ? " " + wait : ""), true);
        }
      }
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) {
            buffer = parseEvents(buffer + "\n\n", onEvent);
            if (!finished) end(t("lost"), true);
            return;
          }
          buffer = parseEvents(buffer + decoder.decode(chunk.value, { stream: true }), onEvent);
          return pump();
        });
      }
      return pump();
    }).catch(function (error) {
      if (error && error.name === "AbortError") end(t("stopped"), false);
      else end(t("lost"), true);
    });
  }

  function stop() {
    if (controller) controller.abort();
  }

  function clearAttachments() {
    fileIds = [];
    if (attachments) attachments.innerHTML = "";
  }

  if (form && question) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var text = question.value.trim();
      if (!text || controller) return;
      question.value = "";
      ask(text);
      question.focus();
    });
    question.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      } else if (event.key === "Escape" && controller) {
        event.preventDefault();
        stop();
      }
    });
  }
  if (stopButton) stopButton.addEventListener("click", function () { stop(); question.focus(); });

  if (attach) {
    attach.addEventListener("change", function () {
      Array.prototype.forEach.call(attach.files, function (file) {
        var item = el("li", "attachment", file.name + " — " + t("uploading"));
        attachments.appendChild(item);
        var data = new FormData();
        data.append("file", file);
        fetch("/api/v1/files/", {
          method: "POST", body: data, credentials: "same-origin",
          headers: { "X-CSRF-Token": window.AlltingCsrf() }
        }).then(function (response) {
          return response.json().catch(function () { return {}; }).then(function (json) {
            return { ok: response.ok, json: json, response: response };
          });
        }).then(function (result) {
          if (!result.ok) {
            item.textContent = t("upload-failed") + " " + file.name + ": " + window.AlltingErrorText(result.json, "", result.response);
            item.classList.add("error-text");
            return;
          }
          fileIds.push(result.json.id);
          item.textContent = file.name + " ";
          var remove = el("button", "icon-button", "✕");
          remove.type = "button";
          remove.setAttribute("aria-label", t("remove") + " " + file.name);
          remove.addEventListener("click", function () {
            fileIds = fileIds.filter(function (id) { return id !== result.json.id; });
            item.remove();
            question.focus();
          });
          item.appendChild(remove);
        }).catch(function () {
          item.textContent = t("upload-failed") + " " + file.name;
          item.classList.add("error-text");
        });
      });
      attach.value = "";
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", renderSources);
  else renderSources();
  if (question && !question.disabled) question.focus();
})();
