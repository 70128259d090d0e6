// A space's knowledge tab: collections, drag-and-drop upload, live document status and search.
// Document progress is pushed over the WebSocket (WS /api/v1/ws, authenticated by the session
// cookie): no polling while the socket is up. The page watches its space, so it also hears about
// documents and crawls other members started. When the connection is lost the page says so and
// reconnects with a growing delay, then reloads the lists once to catch up on what it missed.
(function () {
  "use strict";

  var root = document.getElementById("knowledge");
  if (!root) return;
  var spaceId = root.getAttribute("data-space-id");
  var canEdit = root.getAttribute("data-can-edit") === "true";
  var t = function (key) { return root.getAttribute("data-t-" + key) || key; };
  var status = document.getElementById("knowledge-status");
  var connection = document.getElementById("knowledge-connection");
  var jobs = {};          // job id → collection section holding its document
  var socket = null;
  var attempts = 0;
  var retryTimer = null;
  var countdownTimer = null;

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
  function showConnection(text, kind) {
    if (!connection) return;
    connection.textContent = text;
    connection.hidden = !text;
    connection.className = "connection-status" + (kind ? " " + kind : "");
  }
  function errorText(error, fallback, response) { return window.AlltingErrorText(error, fallback, response); }
  var reasons = {};
  try { reasons = JSON.parse(root.getAttribute("data-error-texts") || "{}"); } catch (e) { reasons = {}; }
  // A failure reason recorded by the worker, in the page's language when the catalog has it.
  function reasonText(text) {
    return (text && (reasons[text] || window.AlltingMessageText(text))) || text || t("unknown-reason");
  }

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
        return response.json().then(function (error) { announce(errorText(error, response.status, response)); });
      });
    });
  }

  function statusCell(doc) {
    var labels = { queued: t("queued"), processing: t("processing"), ready: t("ready"), failed: t("failed") };
    var badge = el("span", "badge" + (doc.status === "ready" ? " ok" : doc.status === "failed" ? " error" : ""),
      labels[doc.status] || doc.status);
    badge.setAttribute("data-role", "status");
    var cell = el("td");
    cell.appendChild(badge);
    if (doc.status === "processing" || doc.status === "queued") {
      var bar = el("progress");
      bar.max = 100;
      if (typeof doc.progress === "number") bar.value = doc.progress;
      bar.setAttribute("aria-label", (doc.title || doc.filename || "") + " " + (doc.progress || 0) + "%");
      cell.appendChild(bar);
    }
    if (doc.status === "failed") {
      var reason = el("p", "error-text", t("reason") + " " + reasonText(doc.error));
      reason.setAttribute("data-role", "reason");
      cell.appendChild(reason);
    }
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
      if (doc.job_id) jobs[doc.job_id] = section;
      var row = el("tr");
      row.setAttribute("data-document-id", doc.id);
      row.setAttribute("data-status", doc.status);
      if (doc.job_id) row.setAttribute("data-job-id", doc.job_id);
      var title = el("td", null, doc.title || doc.filename || "");
      if (doc.status === "ready" && doc.page_count) title.appendChild(el("span", "hint", " · " + doc.page_count + " " + t("pages")));
      row.appendChild(title);
      row.appendChild(statusCell(doc));
      var actions = el("td");
      if (canEdit) {
        var remove = el("button", "button danger small", t("delete"));
        remove.type = "button";
        remove.appendChild(el("span", "visually-hidden", " " + (doc.title || "")));
        remove.addEventListener("click", function () {
          fetch("/api/v1/documents/" + doc.id, { method: "DELETE", credentials: "same-origin", headers: headers(false) })
            .then(function () { load(section); });
        });
        actions.appendChild(remove);
      }
      row.appendChild(actions);
      body.appendChild(row);
    });
  }

  // Loads of one collection may answer out of order (one started at the upload's answer, one when a
  // job event arrives first): an answer draws unless a later-started load has already drawn, so an
  // older list can neither hide the finished state nor be thrown away when it is the only one back.
  var startedLoads = {};
  var drawnLoads = {};
  function load(section) {
    var id = section.getAttribute("data-collection-id");
    var mine = (startedLoads[id] || 0) + 1;
    startedLoads[id] = mine;
    return fetch("/api/v1/collections/" + id + "/documents/?limit=200", { credentials: "same-origin" })
      .then(function (response) { if (!response.ok) throw new Error(String(response.status)); return response.json(); })
      .then(function (page) {
        if (mine < (drawnLoads[id] || 0)) return;
        drawnLoads[id] = mine;
        renderDocuments(section, page.items || []);
      });
  }

  function loadAll() {
    return Promise.all(Array.prototype.map.call(root.querySelectorAll(".collection"), load));
  }

  // A job this page did not start (another member's upload or crawl): place it by what it works on.
  var catchingUp = {};
  function placeJob(job) {
    if (job.website_id && websiteList) {
      jobs[job.id] = { website: job.website_id };
      if (!websiteList.querySelector('[data-website-id="' + job.website_id + '"] .website-latest progress')) loadWebsites();
      return null;
    }
    if (!job.document_id || !job.collection_id) return null;
    var section = root.querySelector('.collection[data-collection-id="' + job.collection_id + '"]');
    if (!section) return null;
    jobs[job.id] = section;
    return section;
  }

  // A job event: move the progress bar, and reload the collection when the job has finished.
  function onJob(job) {
    var section = jobs[job.id] || placeJob(job);
    if (!section) return;
    if (section.website) { onWebsiteJob(section.website, job); return; }
    var row = section.querySelector('tr[data-job-id="' + job.id + '"]');
    if (!row && job.status === "running") {
      // A new document from someone else: show it once (the list brings its progress), then follow it.
      if (!catchingUp[job.id]) {
        catchingUp[job.id] = true;
        load(section).then(function () { delete catchingUp[job.id]; }, function () { delete catchingUp[job.id]; });
      }
      return;
    }
    if (job.status === "running" && row) {
      var badge = row.querySelector('[data-role="status"]');
      if (badge) badge.textContent = t("processing");
      row.setAttribute("data-status", "processing");
      var bar = row.querySelector("progress");
      if (bar && typeof job.progress === "number") {
        bar.value = job.progress;
        bar.setAttribute("aria-label", row.firstChild.textContent + " " + job.progress + "%");
      }
      return;
    }
    if (job.status === "succeeded" || job.status === "failed" || job.status === "cancelled") {
      load(section).then(function () {
        var done = section.querySelector('tr[data-job-id="' + job.id + '"]');
        if (done) announce(done.firstChild.textContent + ": " + (done.querySelector('[data-role="status"]') || {}).textContent);
      });
    }
  }

  function connect() {
    if (!("WebSocket" in window)) return;
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    try {
      socket = new WebSocket(scheme + window.location.host + "/api/v1/ws");
    } catch (e) {
      reconnectLater();
      return;
    }
    root.setAttribute("data-live", "connecting");
    root.removeAttribute("data-watching");
    socket.addEventListener("open", function () {
      var wasLost = attempts > 0;
      socket.send(JSON.stringify({ type: "watch", space_id: spaceId }));
      attempts = 0;
      root.setAttribute("data-live", "open");
      if (wasLost) {
        showConnection(t("reconnected"), "ok");
        window.setTimeout(function () { if (attempts === 0) showConnection(""); }, 4000);
        loadAll();  // catch up on what happened while the connection was down
        loadWebsites();
      }
    });
    socket.addEventListener("message", function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (!message) return;
      if (message.type === "job" && message.data) onJob(message.data);
      else if (message.type === "watching") root.setAttribute("data-watching", "true");
      else if (message.type === "unwatched") root.removeAttribute("data-watching");
    });
    socket.addEventListener("close", function () {
      socket = null;
      root.removeAttribute("data-watching");
      root.setAttribute("data-live", "closed");
      reconnectLater();
    });
  }

  function reconnectLater() {
    attempts += 1;
    var seconds = Math.min(30, Math.pow(2, attempts - 1));
    if (retryTimer) window.clearTimeout(retryTimer);
    if (countdownTimer) window.clearInterval(countdownTimer);
    var left = seconds;
    var say = function () { showConnection(t("lost").replace("{seconds}", String(left)), "warning"); };
    say();
    countdownTimer = window.setInterval(function () { left -= 1; if (left > 0) say(); }, 1000);
    retryTimer = window.setTimeout(function () {
      window.clearInterval(countdownTimer);
      showConnection(t("reconnecting"), "warning");
      connect();
    }, seconds * 1000);
  }
  // Tests (and people on flaky networks) can drop the connection; it comes back by itself.
  window.AlltingKnowledgeSocket = function () { return socket; };

  function upload(section, files) {
    var id = section.getAttribute("data-collection-id");
    var pending = Array.prototype.map.call(files, function (file) {
      announce(t("uploading") + " " + file.name);
      var data = new FormData();
      data.append("file", file);
      return fetch("/api/v1/collections/" + id + "/documents/", {
        method: "POST", body: data, credentials: "same-origin", headers: headers(false)
      }).then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (response.ok) {
            if (body.job_id) jobs[body.job_id] = section;
            return;
          }
          var text = t("upload-failed") + " " + file.name + ": " + errorText(body, response.status, response);
          announce(text);
          var msg = el("p", "error-text", text);
          msg.setAttribute("role", "alert");
          section.insertBefore(msg, section.querySelector("table"));
        });
      });
    });
    Promise.all(pending).then(function () { return load(section); });
  }

  function search(section, searchForm) {
    var id = section.getAttribute("data-collection-id");
    var query = searchForm.querySelector("input[type=search]").value.trim();
    var results = section.querySelector(".search-results");
    if (!query) return;
    results.innerHTML = "";
    results.appendChild(el("p", "hint", t("searching")));
    fetch("/api/v1/collections/" + id + "/search/", {
      method: "POST", credentials: "same-origin", headers: headers(true),
      body: JSON.stringify({ query: query, limit: 8 })
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        results.innerHTML = "";
        if (!response.ok) {
          var failed = el("p", "error-text", errorText(body, response.status, response));
          failed.setAttribute("role", "alert");
          results.appendChild(failed);
          return;
        }
        var items = body.items || [];
        results.appendChild(el("p", "hint", items.length ? t("hits").replace("{count}", String(items.length)) : t("no-hits")));
        var list = el("ol", "passages");
        items.forEach(function (p) {
          var item = el("li", "passage");
          var head = el("p", "passage-source");
          head.appendChild(el("strong", null, p.title || ""));
          if (p.page) head.appendChild(el("span", null, " · " + t("page") + " " + p.page));
          if (p.heading && p.heading !== p.title) head.appendChild(el("span", null, " · " + p.heading));
          item.appendChild(head);
          var text = p.text || "";
          item.appendChild(el("p", "passage-text", text.length > 600 ? text.slice(0, 600) + "…" : text));
          list.appendChild(item);
        });
        results.appendChild(list);
        announce(items.length ? t("hits").replace("{count}", String(items.length)) : t("no-hits"));
      });
    }).catch(function () {
      results.innerHTML = "";
      results.appendChild(el("p", "error-text", t("search-failed")));
    });
  }

  Array.prototype.forEach.call(root.querySelectorAll(".collection"), function (section) {
    var searchForm = section.querySelector(".collection-search");
    if (searchForm) searchForm.addEventListener("submit", function (event) { event.preventDefault(); search(section, searchForm); });
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

  // Websites: add one, see each one's latest crawl with its counts, crawl now, and the run history.
  var websiteList = document.getElementById("website-list");
  var openHistories = {};
  var canEditWebsites = root.getAttribute("data-can-edit-websites") === "true";
  var runLabels = function (status) {
    return { queued: t("queued"), running: t("running"), succeeded: t("succeeded"), failed: t("failed"),
             cancelled: t("cancelled") }[status] || status;
  };
  function when(value) {
    if (!value) return "";
    var date = new Date(value);
    return isNaN(date) ? value : date.toLocaleString(document.documentElement.lang || undefined,
      { dateStyle: "short", timeStyle: "short" });
  }
  function runBadge(run) {
    var badge = el("span", "badge" + (run.status === "succeeded" ? " ok" : run.status === "failed" ? " error" : ""),
      runLabels(run.status));
    badge.setAttribute("data-role", "run-status");
    return badge;
  }
  function runCounts(run) {
    return run.pages_crawled + " " + t("crawled") + ", " + run.pages_unchanged + " " + t("unchanged") + ", " +
      run.pages_failed + " " + t("page-failures") + ", " + run.pages_removed + " " + t("removed");
  }
  function renderWebsites(items) {
    websiteList.innerHTML = "";
    if (!items.length) { websiteList.appendChild(el("p", "hint", t("no-websites"))); return; }
    items.forEach(function (site) {
      var card = el("section", "card stack website");
      card.setAttribute("data-website-id", site.id);
      var headingId = "w-" + site.id;
      card.setAttribute("aria-labelledby", headingId);
      var heading = el("h3", null, site.name);
      heading.id = headingId;
      card.appendChild(heading);
      var link = el("p", "hint", site.url);
      card.appendChild(link);
      var latest = site.latest_crawl;
      var line = el("p", "website-latest");
      line.appendChild(el("span", null, t("last-run") + ": "));
      if (latest) {
        if (latest.job_id) jobs[latest.job_id] = { website: site.id };
        line.appendChild(runBadge(latest));
        line.appendChild(el("span", null, " " + runCounts(latest) + ". " + t("pages-total") + ": " + site.metadata.num_pages + "."));
        if (latest.status === "running" || latest.status === "queued") {
          var bar = el("progress");
          bar.max = 100;
          bar.value = latest.progress || 0;
          bar.setAttribute("aria-label", site.name + " " + (latest.progress || 0) + "%");
          line.appendChild(bar);
        }
        if (latest.error) line.appendChild(el("span", "error-text", " " + t("reason") + " " + reasonText(latest.error)));
      } else {
        line.appendChild(el("span", null, t("never-crawled")));
      }
      card.appendChild(line);
      var actions = el("div", "row");
      if (canEditWebsites) {
        var busy = latest && (latest.status === "queued" || latest.status === "running");
        var crawl = el("button", "button small", t("crawl-now"));
        crawl.type = "button";
        crawl.disabled = !!busy;
        crawl.appendChild(el("span", "visually-hidden", " " + site.name));
        crawl.addEventListener("click", function () { crawlNow(site, crawl); });
        actions.appendChild(crawl);
        var remove = el("button", "button danger small", t("delete"));
        remove.type = "button";
        remove.appendChild(el("span", "visually-hidden", " " + site.name));
        remove.addEventListener("click", function () {
          fetch("/api/v1/websites/" + site.id, { method: "DELETE", credentials: "same-origin", headers: headers(false) })
            .then(loadWebsites);
        });
        actions.appendChild(remove);
      }
      card.appendChild(actions);
      var history = el("details", "run-history");
      history.appendChild(el("summary", null, t("history")));
      var holder = el("div");
      history.appendChild(holder);
      history.addEventListener("toggle", function () {
        openHistories[site.id] = history.open;
        if (history.open) loadRuns(site, holder);
      });
      if (openHistories[site.id]) history.open = true;  // stays open, and up to date, across re-renders
      card.appendChild(history);
      websiteList.appendChild(card);
    });
  }
  function loadRuns(site, holder) {
    fetch("/api/v1/websites/" + site.id + "/runs/", { credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (body) {
        holder.innerHTML = "";
        var runs = body.items || [];
        if (!runs.length) { holder.appendChild(el("p", "hint", t("no-runs"))); return; }
        var table = el("table");
        var caption = el("caption", "visually-hidden", t("history") + " " + site.name);
        table.appendChild(caption);
        var head = el("tr");
        [t("started"), t("trigger"), t("outcome"), t("pages-total"), t("finished")].forEach(function (label) {
          var th = el("th", null, label);
          th.scope = "col";
          head.appendChild(th);
        });
        var thead = el("thead");
        thead.appendChild(head);
        table.appendChild(thead);
        var tbody = el("tbody");
        runs.forEach(function (run) {
          var row = el("tr");
          row.appendChild(el("td", null, when(run.started_at || run.created_at)));
          row.appendChild(el("td", null, run.trigger === "scheduled" ? t("scheduled") : t("manual")));
          var outcome = el("td");
          outcome.appendChild(runBadge(run));
          if (run.error) outcome.appendChild(el("p", "error-text", t("reason") + " " + reasonText(run.error)));
          row.appendChild(outcome);
          row.appendChild(el("td", null, runCounts(run)));
          row.appendChild(el("td", null, when(run.finished_at)));
          tbody.appendChild(row);
        });
        table.appendChild(tbody);
        holder.appendChild(table);
      });
  }
  function loadWebsites() {
    if (!websiteList) return Promise.resolve();
    return fetch("/api/v1/spaces/" + spaceId + "/websites/", { credentials: "same-origin" })
      .then(function (response) { if (!response.ok) throw new Error(String(response.status)); return response.json(); })
      .then(function (body) { renderWebsites(body.items || []); });
  }
  function crawlNow(site, button) {
    button.disabled = true;
    fetch("/api/v1/websites/" + site.id + "/run/", { method: "POST", credentials: "same-origin", headers: headers(false) })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) { button.disabled = false; announce(errorText(body, response.status, response)); return; }
          if (body.job_id) jobs[body.job_id] = { website: site.id };
          announce(t("crawl-queued"));
          return loadWebsites();
        });
      });
  }
  function onWebsiteJob(websiteId, job) {
    var card = websiteList && websiteList.querySelector('[data-website-id="' + websiteId + '"]');
    if (job.status === "running" && card) {
      var badge = card.querySelector('.website-latest [data-role="run-status"]');
      if (badge) badge.textContent = runLabels("running");
      var bar = card.querySelector(".website-latest progress");
      if (bar && typeof job.progress === "number") bar.value = job.progress;
      return;
    }
    if (job.status === "succeeded" || job.status === "failed" || job.status === "cancelled") loadWebsites();
  }
  var websiteForm = document.getElementById("new-website");
  if (websiteForm) {
    websiteForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var problem = document.getElementById("new-website-error");
      var value = function (name) { return websiteForm.querySelector("[name=" + name + "]").value.trim(); };
      var body = { url: value("url"), crawl_type: value("crawl_type"), update_interval: value("update_interval"),
                   max_pages: parseInt(value("max_pages"), 10) || 500 };
      if (value("name")) body.name = value("name");
      fetch("/api/v1/spaces/" + spaceId + "/websites/", {
        method: "POST", credentials: "same-origin", headers: headers(true), body: JSON.stringify(body)
      }).then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (result) {
          if (!response.ok) {
            var detail = (result.details && result.details[0] && result.details[0].message) || "";
            problem.textContent = errorText(result, response.status, response) + (detail && detail !== result.message ? " " + detail : "");
            problem.hidden = false;
            return;
          }
          problem.hidden = true;
          websiteForm.reset();
          if (result.latest_crawl && result.latest_crawl.job_id) jobs[result.latest_crawl.job_id] = { website: result.id };
          return loadWebsites();
        });
      });
    });
  }
  loadAll().catch(function () { announce(t("load-failed")); });
  loadWebsites().catch(function () { announce(t("load-failed")); });
  connect();
})();
