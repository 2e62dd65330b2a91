// Starts Swagger UI on the document the page names in data-spec-url. The page builds
// that URL from where it was served, so the API Gateway stage prefix (/api) is kept.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    displayRequestDuration: true,
    // Offline: never send the document to the public validator.
    validatorUrl: null,
  });
})();
