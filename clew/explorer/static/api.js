// Talking to the explorer's server: reads are GETs; anything that computes or writes is a POST that
// carries this server's token (from the page) and, as every same-origin fetch does, its Origin.

const TOKEN = document.querySelector('meta[name="clew-token"]').content;

async function answer(response) {
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

export async function get(path, params = {}) {
  const query = new URLSearchParams(params).toString();
  return answer(await fetch(`${path}${query ? "?" + query : ""}`, { cache: "no-store" }));
}

export async function post(path, body) {
  return answer(
    await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Clew-Token": TOKEN },
      body: JSON.stringify(body),
      cache: "no-store",
    }),
  );
}
