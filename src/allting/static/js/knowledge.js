// A space's knowledge tab: collections, drag-and-drop upload and live document status.
// Status follows the JSON API; while documents are in progress the list refreshes itself and
// keeps retrying through a lost connection.
(function () {
  "use strict";

  var root = document.getElementById("knowledge");
  if (!root) return;
  var spaceId = root.getAttribute("data-space-id");
  var canEdit = root.getAttribute("data-can-edit") === "true";
  var t = function (key) { return root.getAttribute("data-t-" + key) || key; };
  var status = document.getElementById("knowledge-status");
  var timer = null;
  var failures = 0;

  function headers(json) {
    var h = { "X-CSRF-Token": window.AlltingCsrf() };
    if (json) h["Content-Type"] = "application/json";
    return h;
  }
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function announce(text) { if (status) status.textContent = text; }

  var form = document.getElementById("new-collection");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var name = form.querySelector("input[name=name]").value.trim();
      if (!name) return;
      fetch("/api/v1/collections/", {
        method: "POST", credentials: "same-origin", headers: headers(true),
        body: JSON.stringify({ space_id: spaceId, name: name })
      }).then(function (response) {
        if (response.ok) { window.location.reload(); return; }
        return response.json().then(function (error) { announce(error.message || response.status); });
      });
    });
  }

  function statusBadge(doc) {
    var labels = { queued: t("queued"), processing: t("processing"), ready: t("ready"), failed: t("failed") };
    var badge = el("span", "badge" + (doc.status === "ready" ? " ok" : doc.status === "failed" ? " error" : ""),
      labels[doc.status] || doc.status);
    var cell = el("td");
    cell.appendChild(badge);
    if (doc.status === "processing" && typeof doc.progress === "number") {
      var bar = el("progress");
      bar.max = 100;
      bar.value = doc.progress;
      bar.setAttribute("aria-label", doc.title + " " + doc.progress + "%");
      cell.appendChild(bar);
    }
    if (doc.error) cell.appendChild(el("p", "error-text", doc.error));
    return cell;
  }

  function renderDocuments(section, docs) {
    var body = section.querySelector("tbody");
    body.innerHTML = "";
    if (!docs.length) {
      var row = el("tr");
      var cell = el("td", "hint", t("no-documents"));
      cell.colSpan = 3;
      row.appendChild(cell);
      body.appendChild(row);
    }
    docs.forEach(function (doc) {
      var row = el("tr");
      row.setAttribute("data-document-id", doc.id);
      row.setAttribute("data-status", doc.status);
      row.appendChild(el("td", null, doc.title || doc.filename || ""));
      row.appendChild(statusBadge(doc));
      var actions = el("td");
      if (canEdit) {
        var remove = el("button", "button danger small", t("delete"));
        remove.type = "button";
        remove.appendChild(el("span", "visually-hidden", " " + (doc.title || "")));
        remove.addEventListener("click", function () {
          fetch("/api/v1/documents/" + doc.id, { method: "DELETE", credentials: "same-origin", headers: headers(false) })
            .then(function () { refresh(); });
        });
        actions.appendChild(remove);
      }
      row.appendChild(actions);
      body.appendChild(row);
    });
  }

  function refresh() {
    var sections = root.querySelectorAll(".collection");
    var busy = false;
    var requests = Array.prototype.map.call(sections, function (section) {
      var id = section.getAttribute("data-collection-id");
      return fetch("/api/v1/collections/" + id + "/documents/?limit=200", { credentials: "same-origin" })
        .then(function (response) { if (!response.ok) throw new Error(String(response.status)); return response.json(); })
        .then(function (page) {
          var docs = page.items || [];
          docs.forEach(function (d) { if (d.status === "queued" || d.status === "processing") busy = true; });
          renderDocuments(section, docs);
        });
    });
    return Promise.all(requests).then(function () {
      if (failures) announce("");
      failures = 0;
      schedule(busy ? 1500 : 0);
    }).catch(function () {
      failures += 1;
      announce(t("lost"));
      schedule(Math.min(15000, 1000 * Math.pow(2, failures)));
    });
  }

  function schedule(delay) {
    if (timer) window.clearTimeout(timer);
    timer = delay ? window.setTimeout(refresh, delay) : null;
  }

  function upload(section, files) {
    var id = section.getAttribute("data-collection-id");
    var pending = Array.prototype.map.call(files, function (file) {
      announce(t("uploading") + " " + file.name);
      var data = new FormData();
      data.append("file", file);
      return fetch("/api/v1/collections/" + id + "/documents/", {
        method: "POST", body: data, credentials: "same-origin", headers: headers(false)
      }).then(function (response) {
        if (!response.ok) {
          return response.json().catch(function () { return {}; }).then(function (error) {
            announce(t("upload-failed") + " " + file.name + ": " + (error.message || response.status));
            var msg = el("p", "error-text", t("upload-failed") + " " + file.name + ": " + (error.message || response.status));
            msg.setAttribute("role", "alert");
            section.insertBefore(msg, section.querySelector("table"));
          });
        }
      });
    });
    Promise.all(pending).then(refresh);
  }

  Array.prototype.forEach.call(root.querySelectorAll(".collection"), function (section) {
    var zone = section.querySelector(".dropzone");
    var input = section.querySelector("input[type=file]");
    if (input) input.addEventListener("change", function () { upload(section, input.files); input.value = ""; });
    if (!zone) return;
    zone.addEventListener("dragover", function (event) { event.preventDefault(); zone.classList.add("dragover"); });
    zone.addEventListener("dragleave", function () { zone.classList.remove("dragover"); });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("dragover");
      if (event.dataTransfer && event.dataTransfer.files.length) upload(section, event.dataTransfer.files);
    });
  });
  refresh();
})();
