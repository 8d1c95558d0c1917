/* The web panel's own script (no framework; htmx does the requests and swaps).
 *
 * - theme toggle (light/dark, saved as a preference) and the browser's timezone on
 *   the sign-in form;
 * - the live stream: the event websocket (/api/events/ws) with resume after a
 *   reconnect; each event becomes a DOM event on <body> that htmx elements listen to
 *   with hx-trigger="panel:messages from:body" (or panel:accounts, or panel:sync for
 *   the history sync's progress);
 * - the inbox's keyboard shortcuts and the composer's quick replies and reply-to.
 * No eval, no inline script: the CSP forbids both.
 */
(function () {
  "use strict";
  var body = document.body;
  var csrf = (function () {
    try { return JSON.parse(body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || ""; }
    catch (e) { return ""; }
  })();

  function post(url, data) {
    var form = new URLSearchParams(data);
    return fetch(url, {
      method: "POST", credentials: "same-origin", body: form,
      headers: { "X-CSRF-Token": csrf }
    });
  }

  /* -- theme ------------------------------------------------------------------------ */
  var toggle = document.getElementById("theme-toggle");
  if (toggle) {
    toggle.addEventListener("click", function () {
      var root = document.documentElement;
      var now = root.getAttribute("data-theme");
      if (now === "system" || !now) {
        now = window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
      }
      var next = now === "dark" ? "light" : "dark";
      root.setAttribute("data-theme", next);
      if (csrf) { post(toggle.getAttribute("data-theme-url"), { theme: next }); }
    });
  }

  /* -- the header's menu on phones (the Menu button; CSS shows it at phone widths) ---- */
  var menuButton = document.getElementById("nav-toggle");
  var header = document.querySelector("header.top");
  function showMenu(open) {
    if (!menuButton || !header) { return; }
    header.classList.toggle("menu-open", open);
    menuButton.setAttribute("aria-expanded", open ? "true" : "false");
  }
  if (menuButton && header) {
    menuButton.addEventListener("click", function () {
      showMenu(menuButton.getAttribute("aria-expanded") !== "true");
    });
    header.addEventListener("keydown", function (e) {
      var inMenu = e.target.closest && e.target.closest("details[data-nav-menu][open]");
      if (e.key === "Escape" && !inMenu && header.classList.contains("menu-open")) {
        showMenu(false);
        menuButton.focus();
      }
    });
    document.addEventListener("click", function (e) {
      if (header.classList.contains("menu-open") && !header.contains(e.target)) { showMenu(false); }
    });
  }

  /* -- sign in: the browser's timezone ------------------------------------------------ */
  document.querySelectorAll("[data-browser-timezone]").forEach(function (input) {
    try { input.value = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { /* old browser */ }
  });

  /* -- the live stream -------------------------------------------------------------- */
  var liveAfter = body.getAttribute("data-events-after");
  if (liveAfter !== null && window.WebSocket) {
    var after = parseInt(liveAfter, 10) || 0;
    var delay = 1000;
    var pending = {};
    var timer = null;
    var fire = function () {
      timer = null;
      Object.keys(pending).forEach(function (name) {
        body.dispatchEvent(new CustomEvent(name, { bubbles: true, detail: pending[name] }));
      });
      pending = {};
    };
    var announce = function (name, ev) {
      (pending[name] = pending[name] || []).push(ev);
      if (!timer) { timer = setTimeout(fire, 120); }  // coalesce bursts
    };
    var connect = function () {
      var scheme = location.protocol === "https:" ? "wss:" : "ws:";
      var ws = new WebSocket(scheme + "//" + location.host + "/api/events/ws?after=" + after);
      body.setAttribute("data-live", "connecting");
      ws.onopen = function () { delay = 1000; body.setAttribute("data-live", "open"); };
      ws.onmessage = function (frame) {
        var ev;
        try { ev = JSON.parse(frame.data); } catch (e) { return; }
        if (typeof ev.after === "number" && ev.after > after) { after = ev.after; }
        if (typeof ev.id !== "number") { return; }  // heartbeat, resume
        if (ev.id > after) { after = ev.id; }
        var type = String(ev.type || "");
        if (type.indexOf("message.") === 0 || type.indexOf("chat.") === 0 ||
            type.indexOf("note.") === 0 || type.indexOf("tag") === 0) {
          announce("panel:messages", ev);
        }
        if (type === "account.status") { announce("panel:accounts", ev); }
        if (type === "account.sync") { announce("panel:sync", ev); }  // history sync progress
      };
      ws.onclose = function (e) {
        body.setAttribute("data-live", "closed");
        if (e.code === 1008) { return; }  // signed out or access withdrawn
        setTimeout(connect, delay);  // resume after the last event seen
        delay = Math.min(delay * 2, 15000);
      };
    };
    connect();
  }

  /* -- inbox: keep the list's selection, the shortcuts, the composer ---------------- */
  function chatLinks() { return Array.prototype.slice.call(document.querySelectorAll("#chat-list .chat a")); }
  function current() {
    var links = chatLinks();
    for (var i = 0; i < links.length; i++) {
      if (links[i].getAttribute("aria-current") === "true") { return i; }
    }
    return -1;
  }
  function open(i) {
    var links = chatLinks();
    if (!links.length) { return; }
    i = Math.max(0, Math.min(links.length - 1, i));
    links[i].focus();
    links[i].click();
  }
  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }
  document.addEventListener("keydown", function (e) {
    if (!document.getElementById("chat-list") || e.ctrlKey || e.metaKey || e.altKey) { return; }
    if (e.key === "Escape") {
      var help = document.getElementById("shortcuts");
      if (help && help.open) { help.close(); }
      return;
    }
    if (typing(e.target)) { return; }
    var handled = true;
    if (e.key === "j") { open(current() + 1); }
    else if (e.key === "k") { open(current() <= 0 ? 0 : current() - 1); }
    else if (e.key === "r") { var box = document.getElementById("composer-text"); if (box) { box.focus(); } else { handled = false; } }
    else if (e.key === "e") { var resolve = document.getElementById("resolve-button"); if (resolve) { resolve.click(); } else { handled = false; } }
    else if (e.key === "/") {
      var search = document.getElementById("search");
      var pane = document.querySelector(".inbox");
      if (pane) { pane.classList.remove("has-chat"); }  // phones: back to the list first
      if (search) { search.focus(); } else { handled = false; }
    }
    else if (e.key === "?") { var dialog = document.getElementById("shortcuts"); if (dialog) { dialog.showModal(); } }
    else { handled = false; }
    if (handled) { e.preventDefault(); }
  });

  /* A click in the list marks the chat current (htmx loads it), and on phones shows it. */
  document.addEventListener("click", function (e) {
    var link = e.target.closest && e.target.closest("#chat-list .chat a");
    if (link) {
      chatLinks().forEach(function (a) { a.setAttribute("aria-current", a === link ? "true" : "false"); });
      var chosen = document.getElementById("current-chat");  // a refresh of the list keeps it marked
      var item = link.closest("li.chat");
      if (chosen && item) { chosen.value = item.getAttribute("data-chat") || ""; }
      var inbox = document.querySelector(".inbox");
      if (inbox) { inbox.classList.add("has-chat"); }
    }
    var back = e.target.closest && e.target.closest("[data-back]");
    if (back) {
      var box = document.querySelector(".inbox");
      if (box) { box.classList.remove("has-chat"); e.preventDefault(); }
    }
    var reply = e.target.closest && e.target.closest("[data-reply-to]");
    if (reply) {
      var field = document.getElementById("reply-to");
      var label = document.getElementById("replying");
      if (field && label) {
        field.value = reply.getAttribute("data-reply-to");
        label.hidden = false;
        label.querySelector("span").textContent = reply.getAttribute("data-reply-text") || "";
        var text = document.getElementById("composer-text");
        if (text) { text.focus(); }
      }
    }
    var cancel = e.target.closest && e.target.closest("[data-cancel-reply]");
    if (cancel) { clearReply(); }
    var pick = e.target.closest && e.target.closest("#qr-suggestions li");
    if (pick) { choose(pick); }
  });

  function clearReply() {
    var field = document.getElementById("reply-to");
    var label = document.getElementById("replying");
    if (field) { field.value = ""; }
    if (label) { label.hidden = true; }
  }

  /* Quick replies: "/short" in the composer lists the matching shortcuts. */
  function suggestions() { return document.getElementById("qr-suggestions"); }
  function choose(li) {
    var box = document.getElementById("composer-text");
    var id = document.getElementById("quick-reply-id");
    if (!box || !id) { return; }
    id.value = li.getAttribute("data-id");
    box.value = li.getAttribute("data-body") || "";
    var list = suggestions();
    if (list) { list.hidden = true; }
    box.focus();
    body.dispatchEvent(new CustomEvent("panel:qr-chosen", { detail: li }));  // conversation.js
  }
  document.addEventListener("input", function (e) {
    if (e.target.id !== "composer-text") { return; }
    var list = suggestions();
    var id = document.getElementById("quick-reply-id");
    if (!list) { return; }
    var text = e.target.value;
    if (id && id.value && text.charAt(0) === "/") {
      id.value = "";
      body.dispatchEvent(new CustomEvent("panel:qr-cleared"));
    }
    if (text.charAt(0) !== "/" || text.indexOf(" ") !== -1) { list.hidden = true; return; }
    var word = text.slice(1).toLowerCase();
    var shown = 0;
    Array.prototype.forEach.call(list.querySelectorAll("li"), function (li) {
      var match = li.getAttribute("data-shortcut").indexOf(word) === 0;
      li.hidden = !match;
      li.setAttribute("aria-selected", "false");
      if (match) { shown++; }
    });
    list.hidden = shown === 0;
    var first = list.querySelector("li:not([hidden])");
    if (first) { first.setAttribute("aria-selected", "true"); }
  });
  document.addEventListener("keydown", function (e) {
    if (e.target.id !== "composer-text") { return; }
    var list = suggestions();
    var open = list && !list.hidden;
    if (open && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
      var items = Array.prototype.slice.call(list.querySelectorAll("li:not([hidden])"));
      var at = items.findIndex(function (li) { return li.getAttribute("aria-selected") === "true"; });
      var next = e.key === "ArrowDown" ? Math.min(items.length - 1, at + 1) : Math.max(0, at - 1);
      items.forEach(function (li, i) { li.setAttribute("aria-selected", i === next ? "true" : "false"); });
      e.preventDefault();
    } else if (open && (e.key === "Enter" || e.key === "Tab")) {
      var sel = list.querySelector('li[aria-selected="true"]:not([hidden])');
      if (sel) { choose(sel); e.preventDefault(); }
    } else if (e.key === "Enter" && !e.shiftKey) {
      var form = e.target.form;
      var media = document.getElementById("media-id");
      var reply = document.getElementById("quick-reply-id");  // a quick reply may be media only
      if (form && (e.target.value.trim() || (media && media.value) || (reply && reply.value))) {
        e.preventDefault();
        form.requestSubmit();
      }
    } else if (e.key === "Escape") {
      // Close the suggestions, else cancel the reply, else leave the box (the
      // inbox's shortcuts work again: keyboard-only use).
      var field = document.getElementById("reply-to");
      if (open) { list.hidden = true; }
      else if (field && field.value) { clearReply(); }
      else { e.target.blur(); }
    }
  });

  /* htmx drops 4xx and 5xx answers. The panel's are meant to be read: a refused action
     answers an error fragment (a 403, a 404 for something deleted meanwhile, a 429),
     retargeted at the page's message area, or a form fragment with its errors. Swap
     any HTML error answer; others (a proxy's plain text, an empty 502) stay dropped. */
  body.addEventListener("htmx:beforeSwap", function (e) {
    var xhr = e.detail.xhr;
    if (!xhr || xhr.status < 400) { return; }
    var type = xhr.getResponseHeader("Content-Type") || "";
    if (type.indexOf("text/html") === 0 && xhr.responseText) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });

  /* A live refresh of the chat list keeps the user's place: as many chats as the list
     shows (the pages loaded with "More chats"), its scroll position, the focused chat.
     A change of filters starts again from the top. */
  var listPlace = null;
  body.addEventListener("htmx:configRequest", function (e) {
    if (!e.detail.elt || e.detail.elt.id !== "chat-list") { return; }
    var shown = document.querySelectorAll("#chat-list li.chat").length;
    if (shown) { e.detail.parameters.shown = String(shown); }
    var pane = e.detail.elt.closest(".pane");
    var active = document.activeElement;
    var focused = active && active.closest ? active.closest("#chat-list li.chat") : null;
    listPlace = {
      pane: pane, top: pane ? pane.scrollTop : 0, y: window.scrollY,
      focus: focused ? focused.getAttribute("data-chat") : null
    };
  });
  body.addEventListener("htmx:afterSwap", function (e) {
    if (!listPlace || !e.detail.target || e.detail.target.id !== "chat-list") { return; }
    var place = listPlace;
    listPlace = null;
    if (place.pane) { place.pane.scrollTop = place.top; }
    if (window.scrollY !== place.y) { window.scrollTo(window.scrollX, place.y); }
    if (place.focus) {
      var item = document.querySelector('#chat-list li.chat[data-chat="' + CSS.escape(place.focus) + '"] a');
      if (item) { item.focus({ preventScroll: true }); }
    }
  });

  /* After htmx swaps the conversation in: scroll to the newest message. */
  body.addEventListener("htmx:afterSwap", function (e) {
    var list = document.getElementById("messages");
    if (list && (e.target.id === "conversation" || e.target.id === "messages" || e.target.contains(list))) {
      list.scrollTop = list.scrollHeight;
    }
  });
})();
