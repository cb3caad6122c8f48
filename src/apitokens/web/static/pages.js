// The token pages' conveniences. Everything works without this script: it only adds
// copy buttons and answers the rule tester as you type. No inline script (the pages'
// Content-Security-Policy forbids it), no framework, no build.
"use strict";

(function () {
  function copyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      var target = document.getElementById(button.getAttribute("data-copy"));
      if (!target || !navigator.clipboard) return;
      button.hidden = false;
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(target.textContent).then(function () {
          var label = button.textContent;
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = label; }, 2000);
        });
      });
    });
  }

  function show(result, answer) {
    // textContent only: rules and reasons are what the user typed.
    result.replaceChildren();
    var verdict = document.createElement("p");
    verdict.className = "verdict " + (answer.allowed ? "ok" : "no");
    verdict.textContent = answer.summary || answer.error || "";
    result.appendChild(verdict);
    if (answer.rules && answer.rules.length) {
      var list = document.createElement("ul");
      list.className = "plain";
      answer.rules.forEach(function (rule) {
        var item = document.createElement("li");
        var code = document.createElement("code");
        code.textContent = rule.rule;
        item.appendChild(code);
        item.appendChild(document.createTextNode(": " + (rule.matched ? "matches" : rule.reason)));
        list.appendChild(item);
      });
      result.appendChild(list);
    }
  }

  function ruleTester() {
    var tester = document.querySelector(".tester[data-check-url]");
    if (!tester) return;
    var form = tester.closest("form");
    var result = document.getElementById("tester-result");
    var fields = ["rules", "check_method", "check_path", "check_body", "scope"];
    var timer = null;
    var sent = 0;

    function csrfToken() {
      var meta = document.querySelector('meta[name="csrf-token"]');
      return meta ? meta.getAttribute("content") : value("csrf_token");
    }

    function value(name) {
      var field = form.elements.namedItem(name);
      return field ? field.value : "";
    }

    function check() {
      if (!value("check_path").trim()) return;
      var number = ++sent;
      fetch(tester.getAttribute("data-check-url"), {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
        body: JSON.stringify({
          rules: value("rules"), method: value("check_method"), path: value("check_path"),
          body: value("check_body"), scope: value("scope")
        })
      }).then(function (response) { return response.json(); })
        .then(function (answer) { if (number === sent) show(result, answer); })
        .catch(function () { /* the Check request button still works */ });
    }

    fields.forEach(function (name) {
      var field = form.elements.namedItem(name);
      if (!field) return;
      var targets = field.length !== undefined && !field.tagName ? Array.from(field) : [field];
      targets.forEach(function (element) {
        element.addEventListener("input", function () {
          clearTimeout(timer);
          timer = setTimeout(check, 200);
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    copyButtons();
    ruleTester();
  });
})();
