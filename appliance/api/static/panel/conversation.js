/* The conversation view's extras (panel.js does the stream, shortcuts and quick replies):
 *
 * - pictures: each [data-picture] avatar fetches /panel/pictures/... when it comes into
 *   view (204: no picture, the initials stay), once per address;
 * - older messages: scrolling to the top (or the "Load older messages" button) inserts
 *   the page before the oldest shown; a live refresh re-reads from the oldest shown
 *   (data-since) so the loaded pages stay;
 * - the composer: emoji picker, attachments (file picker, drag and drop, paste; uploaded
 *   through POST /api/accounts/{id}/media, sent by id), a quick reply's custom
 *   variables asked before sending, and our typing state (composing while typing,
 *   paused after).
 * No eval, no inline script or style (the CSP forbids both).
 */
(function () {
  "use strict";
  var body = document.body;
  var csrf = (function () {
    try { return JSON.parse(body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || ""; }
    catch (e) { return ""; }
  })();
  function $(id) { return document.getElementById(id); }

  /* -- pictures -------------------------------------------------------------------- */
  var pictures = {};
  function loadPicture(el) {
    var url = el.getAttribute("data-picture");
    el.removeAttribute("data-picture");
    if (!url) { return; }
    if (!pictures[url]) {
      pictures[url] = fetch(url, { credentials: "same-origin" }).then(function (r) {
        return r.status === 200 ? r.blob().then(function (b) { return URL.createObjectURL(b); }) : null;
      }).catch(function () { return null; });
    }
    pictures[url].then(function (src) {
      if (!src) { return; }
      var img = document.createElement("img");
      img.alt = "";
      img.src = src;
      el.textContent = "";
      el.appendChild(img);
    });
  }
  var seen = window.IntersectionObserver ? new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (entry.isIntersecting) { seen.unobserve(entry.target); loadPicture(entry.target); }
    });
  }) : null;
  function watchPictures(root) {
    (root || document).querySelectorAll("[data-picture]").forEach(function (el) {
      if (seen) { seen.observe(el); } else { loadPicture(el); }
    });
  }
  watchPictures(document);
  /* A page loaded with a chat open shows its newest message (htmx swaps do it too). */
  var opened = $("messages");
  if (opened) { opened.scrollTop = opened.scrollHeight; }

  /* -- older messages ---------------------------------------------------------------- */
  var loadingOlder = false;
  function loadOlder() {
    var list = $("messages");
    var marker = list && list.querySelector("li.older");
    if (!marker || loadingOlder) { return; }
    loadingOlder = true;
    fetch(marker.getAttribute("data-older-url"), {
      credentials: "same-origin", headers: { "HX-Request": "true" }
    }).then(function (r) { return r.ok ? r.text() : null; }).then(function (html) {
      loadingOlder = false;
      if (html === null || $("messages") !== list) { return; }
      var tpl = document.createElement("template");
      tpl.innerHTML = html;
      var frag = tpl.content;
      var firstDay = list.querySelector("li.day");
      var days = frag.querySelectorAll("li.day");
      var lastDay = days.length ? days[days.length - 1] : null;
      if (firstDay && lastDay && firstDay.textContent === lastDay.textContent) { firstDay.remove(); }
      var height = list.scrollHeight;
      var top = list.scrollTop;
      marker.remove();
      list.insertBefore(frag, list.firstChild);
      list.scrollTop = top + (list.scrollHeight - height);
      var oldest = list.querySelector("li.msg[data-cursor]");
      if (oldest) { list.setAttribute("data-since", oldest.getAttribute("data-cursor")); }
      watchPictures(list);
    }).catch(function () { loadingOlder = false; });
  }
  document.addEventListener("scroll", function (e) {
    if (e.target && e.target.id === "messages" && e.target.scrollTop < 60) { loadOlder(); }
  }, true);
  document.addEventListener("click", function (e) {
    if (e.target.closest && e.target.closest("[data-load-older]")) { loadOlder(); }
  });

  /* A live refresh of the messages keeps what was loaded, and the reader's place. */
  var keep = null;
  body.addEventListener("htmx:configRequest", function (e) {
    var list = $("messages");
    var inside = e.detail.elt === list || (e.detail.elt.closest && e.detail.elt.closest("#conversation"));
    if (list && inside && list.getAttribute("data-since")) {
      e.detail.parameters.since = list.getAttribute("data-since");  // actions too
    }
  });
  body.addEventListener("htmx:beforeSwap", function (e) {
    var list = $("messages");
    keep = null;
    if (list && e.detail.target === list) {
      var fromBottom = list.scrollHeight - list.scrollTop - list.clientHeight;
      if (fromBottom > 80) { keep = fromBottom; }
    }
  });
  body.addEventListener("htmx:afterSettle", function () {
    var list = $("messages");
    if (list && keep !== null) { list.scrollTop = list.scrollHeight - list.clientHeight - keep; }
    keep = null;
    watchPictures(document);
    typingSent = 0;
  });

  /* -- emoji ------------------------------------------------------------------------- */
  function togglePicker(show) {
    var picker = $("emoji-picker");
    var button = $("emoji-button");
    if (!picker || !button) { return; }
    picker.hidden = !show;
    button.setAttribute("aria-expanded", show ? "true" : "false");
    if (show) { var first = picker.querySelector("button"); if (first) { first.focus(); } }
  }
  document.addEventListener("click", function (e) {
    var t = e.target;
    if (!t.closest) { return; }
    if (t.closest("#emoji-button")) { togglePicker($("emoji-picker").hidden); return; }
    var pick = t.closest("[data-emoji]");
    if (pick) {
      var box = $("composer-text");
      if (box) {
        var at = box.selectionStart === undefined ? box.value.length : box.selectionStart;
        var end = box.selectionEnd === undefined ? at : box.selectionEnd;
        box.setRangeText(pick.getAttribute("data-emoji"), at, end, "end");
        box.focus();
      }
      togglePicker(false);
      return;
    }
    if (!t.closest("#emoji-picker")) { var p = $("emoji-picker"); if (p && !p.hidden) { togglePicker(false); } }
    if (t.closest("[data-cancel-attachment]")) { clearAttachment(); }
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && e.target.closest && e.target.closest("#emoji-picker")) {
      togglePicker(false);
      var b = $("emoji-button"); if (b) { b.focus(); }
      e.preventDefault();
    }
  });

  /* -- attachments ------------------------------------------------------------------- */
  function showError(text) {
    var p = $("composer-error");
    if (!p) { return; }
    p.textContent = text || "";
    p.hidden = !text;
  }
  function clearAttachment() {
    ["media-id", "media-kind", "media-name"].forEach(function (id) { var f = $(id); if (f) { f.value = ""; } });
    var chip = $("attachment");
    if (chip) { chip.hidden = true; }
    var input = $("attach-input");
    if (input) { input.value = ""; }
  }
  function upload(file) {
    var form = $("composer");
    if (!form || !file) { return; }
    clearAttachment();
    showError("");
    var chip = $("attachment");
    var state = $("attachment-state");
    var send = $("send-button");
    chip.querySelector(".attachment-name").textContent = file.name || "";
    state.textContent = state.getAttribute("data-uploading");
    chip.hidden = false;
    if (send) { send.disabled = true; }
    var data = new FormData();
    data.append("file", file, file.name || "file");
    fetch(form.getAttribute("data-upload-url"), {
      method: "POST", credentials: "same-origin", body: data, headers: { "X-CSRF-Token": csrf }
    }).then(function (r) {
      return r.json().then(function (json) { return { ok: r.ok, json: json }; });
    }).then(function (answer) {
      if (send) { send.disabled = false; }
      state.textContent = "";
      if (!answer.ok) {
        clearAttachment();
        var err = answer.json && answer.json.error;
        showError(typeof err === "string" ? err : "?");
        return;
      }
      $("media-id").value = answer.json.id;
      $("media-kind").value = answer.json.kind;
      $("media-name").value = answer.json.filename || file.name || "";
      chip.setAttribute("data-kind", answer.json.kind);
      var box = $("composer-text");
      if (box) { box.focus(); }
    }).catch(function () {
      if (send) { send.disabled = false; }
      clearAttachment();
    });
  }
  document.addEventListener("change", function (e) {
    if (e.target.id === "attach-input" && e.target.files && e.target.files.length) { upload(e.target.files[0]); }
  });
  document.addEventListener("paste", function (e) {
    if (e.target.id !== "composer-text" || !e.clipboardData) { return; }
    var files = e.clipboardData.files;
    if (files && files.length) { e.preventDefault(); upload(files[0]); }
  });
  function dropZone(e) { return e.target.closest && e.target.closest(".conversation"); }
  function hasFiles(e) {
    return e.dataTransfer && Array.prototype.indexOf.call(e.dataTransfer.types || [], "Files") !== -1;
  }
  document.addEventListener("dragover", function (e) {
    var zone = dropZone(e);
    if (!zone || !$("composer") || !hasFiles(e)) { return; }
    e.preventDefault();
    zone.classList.add("dropping");
    var hint = $("drop-hint"); if (hint) { hint.hidden = false; }
  });
  function endDrag() {
    document.querySelectorAll(".conversation.dropping").forEach(function (z) { z.classList.remove("dropping"); });
    var hint = $("drop-hint"); if (hint) { hint.hidden = true; }
  }
  document.addEventListener("dragleave", function (e) { if (!e.relatedTarget || !dropZone({ target: e.relatedTarget })) { endDrag(); } });
  document.addEventListener("drop", function (e) {
    var zone = dropZone(e);
    endDrag();
    if (!zone || !$("composer") || !e.dataTransfer || !e.dataTransfer.files.length) { return; }
    e.preventDefault();
    upload(e.dataTransfer.files[0]);
  });

  /* -- quick replies' custom variables ---------------------------------------------- */
  function clearVariables() {
    var note = $("qr-media");
    if (note) { note.hidden = true; }
    var box = $("qr-vars");
    if (!box) { return; }
    box.hidden = true;
    box.querySelector(".qr-vars-fields").textContent = "";
  }
  body.addEventListener("panel:qr-chosen", function (e) {
    clearVariables();
    // A quick reply with media sends it too: say which (its kind and name).
    var media = e.detail.getAttribute("data-media") || "";
    var note = $("qr-media");
    if (note && media) {
      note.querySelector("span").textContent = media;
      note.hidden = false;
    }
    var names = (e.detail.getAttribute("data-variables") || "").split(",").filter(Boolean);
    var box = $("qr-vars");
    if (!box || !names.length) { return; }
    var fields = box.querySelector(".qr-vars-fields");
    names.forEach(function (name) {
      var label = document.createElement("label");
      label.setAttribute("for", "qr-var-" + name);
      label.textContent = name;
      var input = document.createElement("input");
      input.id = "qr-var-" + name;
      input.name = "var." + name;
      input.required = true;
      input.autocomplete = "off";
      input.maxLength = 1024;
      fields.appendChild(label);
      fields.appendChild(input);
    });
    box.hidden = false;
    var first = fields.querySelector("input");
    if (first) { setTimeout(function () { first.focus(); }, 0); }
  });
  body.addEventListener("panel:qr-cleared", clearVariables);

  /* -- our typing state ------------------------------------------------------------- */
  var typingSent = 0;
  function presence(state) {
    var form = $("composer");
    if (!form || !csrf) { return; }
    fetch(form.getAttribute("data-presence-url"), {
      method: "POST", credentials: "same-origin",
      body: new URLSearchParams({ state: state }), headers: { "X-CSRF-Token": csrf }
    }).catch(function () { /* best effort */ });
  }
  document.addEventListener("input", function (e) {
    if (e.target.id !== "composer-text") { return; }
    var text = e.target.value;
    if (!text.trim() || text.charAt(0) === "/") { return; }
    var now = Date.now();
    if (now - typingSent > 8000) { typingSent = now; presence("composing"); }
  });
  document.addEventListener("focusout", function (e) {
    if (e.target.id === "composer-text" && typingSent) { typingSent = 0; presence("paused"); }
  });
})();
