// Starts Swagger UI on /docs (a file, not an inline script, so the CSP stays strict).
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // never send the spec to validator.swagger.io
  withCredentials: true,
  persistAuthorization: false,
  // "Try it out" with a session cookie: unsafe methods need the CSRF token, which
  // the sign-in form on / keeps in this tab's sessionStorage.
  requestInterceptor: function (req) {
    var token = window.sessionStorage.getItem("appliance.csrf");
    if (token) {
      req.headers["X-CSRF-Token"] = token;
    }
    return req;
  },
});
