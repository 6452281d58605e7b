#include "api/playground.hpp"

namespace pixelgate::api {

std::string_view playground_html() {
  static constexpr std::string_view kPage = R"html(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pixelgate playground</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  label { display: block; margin-top: .75rem; font-weight: 600; }
  input { width: 100%; padding: .4rem; font-size: 1rem; box-sizing: border-box; }
  .row { display: flex; gap: 1rem; } .row > div { flex: 1; }
  button { margin-top: 1rem; padding: .5rem 1.25rem; font-size: 1rem; }
  code { background: #f3f3f3; padding: .15rem .3rem; word-break: break-all; }
  #result img { max-width: 100%; margin-top: 1rem; border: 1px solid #ddd; }
  #status { margin-top: .5rem; color: #555; }
</style>
</head>
<body>
<h1>pixelgate playground</h1>
<p>Builds a <code>/generate-image</code> URL, the same URL a page puts in <code>&lt;img src&gt;</code>.</p>
<form id="form">
  <label for="prompt">Prompt</label>
  <input id="prompt" name="prompt" value="a blue dog wearing sunglasses" required>
  <div class="row">
    <div><label for="template">Template</label><input id="template" name="template" value="default"></div>
    <div><label for="width">Width</label><input id="width" name="width" type="number" value="512"></div>
    <div><label for="height">Height</label><input id="height" name="height" type="number" value="512"></div>
    <div><label for="seed">Seed (empty = derived)</label><input id="seed" name="seed"></div>
  </div>
  <button type="submit">Generate</button>
</form>
<div id="result"></div>
<script>
  const form = document.getElementById('form');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const name of ['prompt', 'template', 'width', 'height', 'seed']) {
      const value = form.elements[name].value.trim();
      if (value !== '') params.set(name, value);
    }
    const url = '/generate-image?' + params.toString();
    const result = document.getElementById('result');
    result.innerHTML = '<p id="status">Generating...</p>';
    const started = performance.now();
    const response = await fetch(url);
    const elapsed = Math.round(performance.now() - started);
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const message = body.error ? body.error.message : response.statusText;
      result.innerHTML = '';
      const p = document.createElement('p');
      p.id = 'status';
      p.textContent = 'Error ' + response.status + ': ' + message;
      result.appendChild(p);
      return;
    }
    const blob = await response.blob();
    result.innerHTML = '';
    const status = document.createElement('p');
    status.id = 'status';
    status.textContent = 'cache: ' + response.headers.get('X-Pixelgate-Cache') + ', ' + elapsed + ' ms';
    const link = document.createElement('p');
    const code = document.createElement('code');
    code.textContent = url;
    link.appendChild(code);
    const img = document.createElement('img');
    img.alt = form.elements.prompt.value;
    img.src = URL.createObjectURL(blob);
    result.append(status, link, img);
  });
</script>
</body>
</html>
)html";
  return kPage;
}

}  // namespace pixelgate::api
