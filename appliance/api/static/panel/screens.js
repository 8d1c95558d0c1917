/* The navigation's menus and the automation screens (no framework, no eval; CSP-safe).
 *
 * - Menus: <details data-nav-menu> in the header work without script (Enter/Space on
 *   the summary opens and closes them). Here: opening one closes the others; Escape
 *   closes the open one and puts the focus back on its summary; a click or the focus
 *   going elsewhere closes it.
 * - Code editor: a line-number gutter beside textarea[data-code-editor], scrolled with
 *   it; Tab indents (two spaces) unless Escape was pressed just before, so the
 *   keyboard can always leave the editor.
 * - Script trigger: only the settings of the chosen trigger are shown.
 * - A file input with data-max-bytes (the quick replies' media) refuses a file over the
 *   limit before it is sent (the server says it too, but only after the upload).
 * - A secret shown once (a form post's answer, [data-replace-url]): the history gets the
 *   screen's own address instead of the post, so a reload shows the screen without the
 *   secret and posts nothing again (no second rotation, no second key).
 */
(function () {
  "use strict";

  /* -- navigation menus ------------------------------------------------------------- */
  var menus = Array.prototype.slice.call(document.querySelectorAll("details[data-nav-menu]"));
  function closeAll(except) {
    menus.forEach(function (m) { if (m !== except) { m.open = false; } });
  }
  menus.forEach(function (menu) {
    menu.addEventListener("toggle", function () { if (menu.open) { closeAll(menu); } });
    menu.addEventListener("keydown", function (e) {
      if (e.key === "Escape" && menu.open) {
        menu.open = false;
        menu.querySelector("summary").focus();
        e.stopPropagation();
      }
    });
    menu.addEventListener("focusout", function (e) {
      if (menu.open && e.relatedTarget && !menu.contains(e.relatedTarget)) { menu.open = false; }
    });
  });
  document.addEventListener("click", function (e) {
    menus.forEach(function (m) { if (m.open && !m.contains(e.target)) { m.open = false; } });
  });

  /* -- code editor with line numbers ------------------------------------------------ */
  document.querySelectorAll("textarea[data-code-editor]").forEach(function (area) {
    var gutter = area.parentNode.querySelector(".gutter");
    var escaped = false;
    function number() {
      if (!gutter) { return; }
      var count = area.value.split("\n").length;
      var text = "";
      for (var i = 1; i <= count; i++) { text += i + "\n"; }
      gutter.textContent = text;
      gutter.scrollTop = area.scrollTop;
    }
    if (gutter) { gutter.hidden = false; }
    area.addEventListener("input", number);
    area.addEventListener("scroll", function () { if (gutter) { gutter.scrollTop = area.scrollTop; } });
    area.addEventListener("keydown", function (e) {
      if (e.key === "Escape") { escaped = true; return; }
      if (e.key === "Tab" && !e.shiftKey && !escaped && !e.ctrlKey && !e.altKey && !e.metaKey) {
        e.preventDefault();
        var start = area.selectionStart;
        area.setRangeText("  ", start, area.selectionEnd, "end");
        number();
      }
      escaped = false;
    });
    number();
  });

  /* -- a script's trigger settings -------------------------------------------------- */
  var trigger = document.getElementById("f-scr-trigger");
  var parts = document.querySelectorAll(".trigger-part[data-for-trigger]");
  if (trigger && parts.length) {
    var show = function () {
      parts.forEach(function (part) {
        part.hidden = part.getAttribute("data-for-trigger").split(" ").indexOf(trigger.value) < 0;
      });
    };
    trigger.addEventListener("change", show);
    show();
  }

  /* -- file size limits --------------------------------------------------------------- */
  document.addEventListener("change", function (e) {
    var input = e.target;
    if (!input.matches || !input.matches("input[type=file][data-max-bytes]")) { return; }
    var limit = parseInt(input.getAttribute("data-max-bytes"), 10);
    var file = input.files && input.files[0];
    var over = Boolean(file && limit && file.size > limit);
    input.setCustomValidity(over ? input.getAttribute("data-too-large") || "" : "");
    if (over) { input.reportValidity(); }
  });
  /* -- a secret shown once: the screen's own address in the history ------------------- */
  var once = document.querySelector("[data-replace-url]");
  if (once && window.history && window.history.replaceState) {
    window.history.replaceState(null, "", once.getAttribute("data-replace-url"));
  }
})();
