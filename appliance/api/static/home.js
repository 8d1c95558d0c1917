// Sign-in on the landing page at /: a session cookie for /docs (a file, not an
// inline script, so the CSP stays strict). The CSRF token goes to this tab's
// sessionStorage, where /static/docs.js picks it up for "Try it out".
"use strict";
(function () {
  var form = document.getElementById("login");
  var status = document.getElementById("session");
  var logout = document.getElementById("logout");

  function signedIn(name, role, csrf) {
    if (csrf) {
      window.sessionStorage.setItem("appliance.csrf", csrf);
    }
    status.textContent = "Signed in as " + name + " (" + role + ").";
    if (role === "admin") {
      var link = document.createElement("a");
      link.href = "/docs";
      link.textContent = "Open the API docs";
      status.append(" ", link);
    } else {
      status.append(" The API docs are for admins.");
    }
    form.hidden = true;
    logout.hidden = false;
  }

  function signedOut(message) {
    window.sessionStorage.removeItem("appliance.csrf");
    status.textContent = message;
    form.hidden = false;
    logout.hidden = true;
  }

  function errorText(response, body) {
    return (body && body.error) || "HTTP " + response.status;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    status.textContent = "Signing in…";
    fetch("/auth/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        username: form.elements.username.value,
        password: form.elements.password.value,
      }),
    })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) {
            throw new Error(errorText(response, body));
          }
          form.elements.password.value = "";
          signedIn(body.user.username, body.user.role, body.csrf_token);
        });
      })
      .catch(function (err) {
        signedOut("Not signed in: " + err.message);
      });
  });

  logout.addEventListener("click", function () {
    fetch("/auth/logout", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": window.sessionStorage.getItem("appliance.csrf") || "" },
    }).finally(function () {
      signedOut("Signed out.");
    });
  });

  fetch("/auth/me", { credentials: "same-origin" })
    .then(function (response) {
      if (!response.ok) {
        return;
      }
      return response.json().then(function (me) {
        if (me.kind === "user") {
          signedIn(me.name, me.role, me.csrf_token);
        }
      });
    })
    .catch(function () {});
})();
