/* Reload a page whose deliveries are in flight every few seconds, as a meta refresh would,
 * but not while someone types in one of its forms (a replay's reason): a reload would wipe
 * it. The seconds come from the script tag's data-seconds. */
(function () {
  "use strict";
  var script = document.currentScript;
  var seconds = Number((script && script.dataset.seconds) || 5);

  function busy() {
    var active = document.activeElement;
    if (active && active.form) {
      return true;
    }
    var fields = document.querySelectorAll("form input[type=text], form textarea");
    for (var i = 0; i < fields.length; i += 1) {
      if (fields[i].value) {
        return true;
      }
    }
    return false;
  }

  function tick() {
    if (busy()) {
      window.setTimeout(tick, seconds * 1000);
    } else {
      window.location.reload();
    }
  }

  window.messagioRefresh = { busy: busy };
  window.setTimeout(tick, seconds * 1000);
})();
