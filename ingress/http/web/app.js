// The search page. Plain JavaScript, no framework, nothing from another origin.
// Every URL is relative to the page, so the page works under any route prefix.
"use strict";

(() => {
  const KEY_STORAGE = "imagesearch.apiKey";
  const THUMB_SIZE = 256;
  // What each "but not" term counts against the query's 1 (the CLI's --not-weight default).
  const NOT_WEIGHT = 0.5;

  const $ = (id) => document.getElementById(id);
  const el = {
    keyForm: $("key-form"), apiKey: $("api-key"), keyClear: $("key-clear"),
    textForm: $("text-form"), query: $("query"), alpha: $("alpha"), alphaValue: $("alpha-value"),
    dropzone: $("dropzone"), imageFile: $("image-file"), dropPreview: $("drop-preview"),
    urlForm: $("url-form"), imageUrl: $("image-url"),
    filters: $("filters"), minScore: $("min-score"), limit: $("limit"), dedup: $("dedup"),
    status: $("status"), error: $("error"),
    resultsHeading: $("results-heading"), summary: $("results-summary"), results: $("results"),
    more: $("more"), browse: $("browse"), notQuery: $("not-query"),
    selection: $("selection"), selectionCount: $("selection-count"),
    similarSelected: $("similar-selected"), selectionClear: $("selection-clear"),
    uploadForm: $("upload-form"), uploadFiles: $("upload-files"), uploadTags: $("upload-tags"),
    uploadResults: $("upload-results"),
    viewer: $("viewer"), viewerTitle: $("viewer-title"), viewerClose: $("viewer-close"),
    viewerImage: $("viewer-image"), viewerFacts: $("viewer-facts"), tagsForm: $("tags-form"),
    viewerTags: $("viewer-tags"), viewerStatus: $("viewer-status"),
    viewerSimilar: $("viewer-similar"), viewerOriginal: $("viewer-original"),
  };

  // -- API ---------------------------------------------------------------------------

  let apiKey = "";
  try {
    apiKey = localStorage.getItem(KEY_STORAGE) || "";
  } catch (_) {
    // Storage may be off (private mode, policies); the key then lasts for this page only.
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders() {
    return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  }

  // A 5xx without the service's JSON error comes from Serve's proxy: the replica holding
  // the request died (a crash, a rolling upgrade). Calls that are safe to repeat (reads,
  // searches, deletes, uploads of a file: its id is its hash) are tried again a few
  // times; adding by URL is not, since the URL may answer other bytes next time.
  const RESTART_RETRY_DELAYS_MS = [500, 1500, 3000];
  const RESTARTED = "the service restarted, try again";

  function repeatable(path, method, form) {
    if (method === "GET" || method === "DELETE") return true;
    return path.startsWith("search/") || (form !== undefined && form.has("file"));
  }

  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // fetch() with the key, the service's JSON error model turned into an ApiError.
  async function api(path, { method = "GET", json, form } = {}) {
    const retries = repeatable(path, method, form) ? RESTART_RETRY_DELAYS_MS : [];
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await apiOnce(path, method, json, form);
      } catch (err) {
        if (!(err instanceof ApiError) || !err.restarted || attempt >= retries.length) throw err;
        await pause(retries[attempt]);
      }
    }
  }

  async function apiOnce(path, method, json, form) {
    const headers = authHeaders();
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body });
    } catch (err) {
      throw new ApiError(0, "network_error", `the service could not be reached (${err.message})`);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!response.ok) {
      const detail = data && data.error;
      if (!detail && response.status >= 500) {
        const err = new ApiError(response.status, "service_restarted", RESTARTED);
        err.restarted = true;
        throw err;
      }
      throw new ApiError(
        response.status,
        (detail && detail.code) || "http_error",
        (detail && detail.message) || `${response.status} ${response.statusText}`,
      );
    }
    return data;
  }

  // Images: a plain <img src> when no key is needed (the browser caches and lazy-loads);
  // with a key, fetched with it and shown from an object URL once the image is near view.
  const objectUrls = new Set();
  const lazyLoader = "IntersectionObserver" in window
    ? new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (entry.isIntersecting) {
          lazyLoader.unobserve(entry.target);
          loadWithKey(entry.target);
        }
      }
    }, { rootMargin: "200px" })
    : null;

  function setImage(img, url) {
    img.dataset.src = url;
    if (!apiKey) {
      img.src = url;
    } else if (lazyLoader && img.loading === "lazy") {
      lazyLoader.observe(img);
    } else {
      loadWithKey(img);
    }
  }

  async function loadWithKey(img) {
    try {
      const response = await fetch(img.dataset.src, { headers: authHeaders() });
      if (!response.ok) throw new Error(String(response.status));
      const url = URL.createObjectURL(await response.blob());
      objectUrls.add(url);
      img.src = url;
    } catch (_) {
      img.classList.add("broken");
    }
  }

  function releaseObjectUrls() {
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls.clear();
  }

  const thumbUrl = (id) => `images/${encodeURIComponent(id)}/thumbnail?size=${THUMB_SIZE}`;
  const contentUrl = (id) => `images/${encodeURIComponent(id)}/content`;

  // -- messages ------------------------------------------------------------------------

  function say(text) {
    el.status.textContent = text;
  }

  function showError(err) {
    const prefix = err.status ? `${err.status} ${err.code}: ` : "";
    el.error.textContent = `${prefix}${err.message}`;
    el.error.hidden = false;
    say("");
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
  }

  // -- search options ------------------------------------------------------------------

  function splitTags(text) {
    const tags = [];
    for (const part of text.split(",")) {
      const tag = part.trim();
      if (tag && !tags.includes(tag)) tags.push(tag);
    }
    return tags;
  }

  function numberOrNull(input) {
    const value = input.value.trim();
    if (value === "") return null;
    const n = Number(value);
    return Number.isFinite(n) ? n : null;
  }

  function isoOrNull(input) {
    if (!input.value) return null;
    const date = new Date(input.value); // datetime-local: the browser's time zone
    return Number.isNaN(date.getTime()) ? null : date.toISOString();
  }

  // Only the filters that are set: an empty search sends none, so plain vector search
  // works against a service without filters.
  function currentFilters() {
    const f = el.filters.elements;
    const filters = {};
    const tags = splitTags(f.tags_any.value);
    if (tags.length) filters.tags_any = tags;
    if (f.content_types.value) filters.content_types = [f.content_types.value];
    const minWidth = numberOrNull(f.min_width);
    if (minWidth !== null) filters.min_width = Math.trunc(minWidth);
    const minHeight = numberOrNull(f.min_height);
    if (minHeight !== null) filters.min_height = Math.trunc(minHeight);
    const after = isoOrNull(f.created_after);
    if (after) filters.created_after = after;
    const before = isoOrNull(f.created_before);
    if (before) filters.created_before = before;
    return filters;
  }

  function commonOptions(offset) {
    const options = {};
    const limit = numberOrNull(el.limit);
    if (limit !== null) options.limit = Math.max(1, Math.trunc(limit));
    if (offset) options.offset = offset;
    const filters = currentFilters();
    if (Object.keys(filters).length) options.filters = filters;
    const minScore = numberOrNull(el.minScore);
    if (minScore !== null) options.min_score = minScore;
    if (el.dedup.checked) options.dedup = true;
    return options;
  }

  function asForm(options) {
    const form = new FormData();
    for (const [name, value] of Object.entries(options)) {
      form.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    return form;
  }

  function selectedMode() {
    const checked = el.textForm.querySelector("input[name=mode]:checked");
    return checked ? checked.value : "vector";
  }

  // -- searches ------------------------------------------------------------------------

  async function runSearch(search, offset = 0) {
    clearError();
    say(offset ? "Loading more…" : `Searching ${search.label}…`);
    el.more.hidden = true;
    try {
      const data = await search.run(offset);
      const results = data.results || [];
      renderResults(results, { append: Boolean(offset), searchLabel: search.label, tookMs: data.took_ms });
      const next = data.next_offset;
      if (next !== undefined && next !== null) {
        el.more.hidden = false;
        el.more.onclick = () => runSearch(search, next);
      }
    } catch (err) {
      showError(err);
    }
  }

  // With "but not" words, the query is a weighted list; without, the plain text.
  function textSearch(query, negatives = []) {
    const mode = selectedMode();
    const alpha = Number(el.alpha.value);
    const terms = negatives.length
      ? [{ text: query, weight: 1 }, ...negatives.map((text) => ({ text, weight: -NOT_WEIGHT }))]
      : query;
    const not = negatives.length ? ` but not ${negatives.map((n) => `“${n}”`).join(", ")}` : "";
    return {
      label: `for “${query}”${not}`,
      run: (offset) => {
        const body = { query: terms, ...commonOptions(offset) };
        if (mode === "hybrid") {
          body.mode = "hybrid";
          body.alpha = alpha;
        }
        return api("search/text", { method: "POST", json: body });
      },
    };
  }

  function imageSearch(file) {
    return {
      label: `like ${file.name || "the dropped image"}`,
      run: (offset) => {
        const form = asForm(commonOptions(offset));
        form.append("file", file, file.name || "image");
        return api("search/image", { method: "POST", form });
      },
    };
  }

  function urlSearch(url) {
    return {
      label: `like ${url}`,
      run: (offset) => api("search/url", { method: "POST", json: { url, ...commonOptions(offset) } }),
    };
  }

  function similarSearch(records) {
    const names = records.map((record) => (record.caption ? `“${record.caption}”` : record.id));
    const examples = records.length === 1
      ? { id: records[0].id }
      : { ids: records.map((record) => record.id) };
    return {
      label: `like ${names.join(", ")}`,
      // The service leaves the example images out of the results.
      run: (offset) =>
        api("search/similar", { method: "POST", json: { ...examples, ...commonOptions(offset) } }),
    };
  }

  function browseImages() {
    return {
      label: "in all images",
      run: async (offset) => {
        const params = new URLSearchParams();
        const options = commonOptions(0);
        params.set("limit", String(options.limit || 24));
        if (offset) params.set("cursor", offset);
        for (const [name, value] of Object.entries(options.filters || {})) {
          for (const item of Array.isArray(value) ? value : [value]) params.append(name, item);
        }
        const data = await api(`images?${params}`);
        return {
          results: data.images.map((image) => ({ image, score: null })),
          next_offset: data.next_cursor,
        };
      },
    };
  }

  // -- results -------------------------------------------------------------------------

  function fmt(score) {
    return typeof score === "number" ? score.toFixed(3) : "";
  }

  function resultItem(result) {
    const image = result.image;
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.id = image.id;

    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.setAttribute("aria-label", `Open image: ${image.caption || image.id}`);
    const img = document.createElement("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = image.caption || "";
    // The thumbnail's box: longest side THUMB_SIZE, so the grid does not jump as it loads.
    const scale = Math.min(1, THUMB_SIZE / Math.max(image.width, image.height));
    img.width = Math.max(1, Math.round(image.width * scale));
    img.height = Math.max(1, Math.round(image.height * scale));
    setImage(img, thumbUrl(image.id));
    open.append(img);
    open.addEventListener("click", () => openViewer(image));

    const caption = document.createElement("p");
    caption.className = "caption";
    caption.textContent = captionText(image);
    if (image.caption_status && image.caption_status !== "done") {
      caption.classList.add(image.caption_status);
    }

    const meta = document.createElement("p");
    meta.className = "meta";
    const parts = [];
    if (typeof result.score === "number") parts.push(`score ${fmt(result.score)}`);
    // The parts behind a fused (hybrid) score; in vector search the score is the part.
    const hasParts = typeof result.keyword_score === "number"
      || (typeof result.vector_score === "number" && result.vector_score !== result.score);
    if (hasParts) {
      if (typeof result.vector_score === "number") parts.push(`vector ${fmt(result.vector_score)}`);
      if (typeof result.keyword_score === "number") parts.push(`keyword ${fmt(result.keyword_score)}`);
    }
    if (result.near_duplicates && result.near_duplicates.length) {
      parts.push(`+${result.near_duplicates.length} near-duplicate${result.near_duplicates.length > 1 ? "s" : ""}`);
    }
    meta.textContent = parts.join(" · ");

    const tags = document.createElement("p");
    tags.className = "tags";
    tags.textContent = image.tags && image.tags.length ? image.tags.map((t) => `#${t}`).join(" ") : "";

    const similar = document.createElement("button");
    similar.type = "button";
    similar.className = "similar";
    similar.textContent = "More like this";
    similar.setAttribute("aria-label", `More like this: ${image.caption || image.id}`);
    similar.addEventListener("click", () => moreLikeThis(image));

    const pick = document.createElement("label");
    pick.className = "pick";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "pick-box";
    box.setAttribute("aria-label", `Select for more like these: ${image.caption || image.id}`);
    box.addEventListener("change", () => setPicked(image, box.checked, li));
    pick.append(box, document.createTextNode("Select"));

    li.append(open, caption, meta, tags, pick, similar);
    return li;
  }

  // -- "more like these": results picked with their checkboxes ---------------------------

  const picked = new Map();

  function setPicked(image, on, li) {
    if (on) picked.set(image.id, image);
    else picked.delete(image.id);
    li.classList.toggle("picked", on);
    syncSelection();
  }

  function clearPicked() {
    picked.clear();
    for (const box of el.results.querySelectorAll(".pick-box")) box.checked = false;
    for (const li of el.results.querySelectorAll(".picked")) li.classList.remove("picked");
    syncSelection();
  }

  function syncSelection() {
    el.selection.hidden = picked.size === 0;
    el.selectionCount.textContent = `${picked.size} selected`;
  }

  el.similarSelected.addEventListener("click", () => {
    if (!picked.size) return;
    const examples = [...picked.values()];
    el.resultsHeading.focus();
    runSearch(similarSearch(examples));
  });
  el.selectionClear.addEventListener("click", clearPicked);

  function renderResults(results, { append, searchLabel, tookMs }) {
    if (!append) {
      releaseObjectUrls();
      el.results.replaceChildren();
      clearPicked(); // a selection is of the results on show
    }
    el.results.append(...results.map(resultItem));
    const shown = el.results.children.length;
    const took = typeof tookMs === "number" ? ` in ${Math.round(tookMs)} ms` : "";
    el.summary.textContent = shown
      ? `${shown} image${shown === 1 ? "" : "s"} ${searchLabel}${took}`
      : `No images ${searchLabel}`;
    say(shown ? `${shown} result${shown === 1 ? "" : "s"}` : "No results");
  }

  function moreLikeThis(image) {
    if (el.viewer.open) el.viewer.close();
    el.resultsHeading.focus();
    runSearch(similarSearch([image]));
  }

  // -- the image dialog ----------------------------------------------------------------

  let viewing = null;

  function fact(name, value) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    return [dt, dd];
  }

  function showFacts(image) {
    const facts = [
      ...fact("Size", `${image.width} × ${image.height}, ${Math.ceil(image.size_bytes / 1024)} KiB`),
      ...fact("Type", image.content_type),
      ...fact("Added", new Date(image.created_at).toLocaleString()),
      ...fact("Tags", image.tags && image.tags.length ? image.tags.join(", ") : "none"),
      ...fact("Id", image.id),
    ];
    if (image.source_url) facts.push(...fact("Source", image.source_url));
    el.viewerFacts.replaceChildren(...facts);
  }

  function openViewer(image) {
    viewing = image;
    el.viewerTitle.textContent = image.caption || "Image";
    el.viewerImage.alt = image.caption || "";
    el.viewerImage.removeAttribute("src");
    setImage(el.viewerImage, contentUrl(image.id));
    el.viewerOriginal.href = contentUrl(image.id);
    el.viewerOriginal.hidden = Boolean(apiKey); // a plain link cannot carry the key
    el.viewerTags.value = (image.tags || []).join(", ");
    el.viewerStatus.textContent = "";
    showFacts(image);
    el.viewer.showModal();
  }

  el.viewerClose.addEventListener("click", () => el.viewer.close());
  el.viewer.addEventListener("click", (event) => {
    if (event.target === el.viewer) el.viewer.close(); // a click on the backdrop
  });
  el.viewerSimilar.addEventListener("click", () => {
    if (viewing) moreLikeThis(viewing);
  });

  el.tagsForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!viewing) return;
    el.viewerStatus.textContent = "Saving…";
    try {
      const record = await api(`images/${encodeURIComponent(viewing.id)}`, {
        method: "PATCH",
        json: { tags: splitTags(el.viewerTags.value) },
      });
      viewing = record;
      showFacts(record);
      el.viewerTags.value = record.tags.join(", ");
      el.viewerStatus.textContent = "Tags saved.";
      const item = el.results.querySelector(`li[data-id="${CSS.escape(record.id)}"] .tags`);
      if (item) item.textContent = record.tags.map((t) => `#${t}`).join(" ");
    } catch (err) {
      el.viewerStatus.textContent = "";
      showError(err);
    }
  });

  // -- forms ---------------------------------------------------------------------------

  function syncAlpha() {
    el.alpha.disabled = selectedMode() !== "hybrid";
    el.alphaValue.textContent = Number(el.alpha.value).toFixed(2);
  }
  el.alpha.addEventListener("input", syncAlpha);
  for (const radio of el.textForm.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", syncAlpha);
  }
  syncAlpha();

  el.textForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = el.query.value.trim();
    if (!query) {
      showError(new ApiError(0, "", "Type some words to search for."));
      return;
    }
    runSearch(textSearch(query, splitTags(el.notQuery.value)));
  });

  el.urlForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const url = el.imageUrl.value.trim();
    if (url) runSearch(urlSearch(url));
  });

  el.browse.addEventListener("click", () => runSearch(browseImages()));

  let previewUrl = null;
  function searchByFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError(new ApiError(0, "", `${file.name} is not an image.`));
      return;
    }
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    el.dropPreview.src = previewUrl;
    el.dropPreview.alt = `Query image: ${file.name || "dropped image"}`;
    el.dropPreview.hidden = false;
    runSearch(imageSearch(file));
  }

  el.imageFile.addEventListener("change", () => {
    searchByFile(el.imageFile.files[0]);
    el.imageFile.value = ""; // choosing the same file again searches again
  });

  for (const type of ["dragenter", "dragover"]) {
    el.dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
      el.dropzone.classList.add("dragging");
    });
  }
  el.dropzone.addEventListener("dragleave", () => el.dropzone.classList.remove("dragging"));
  el.dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    el.dropzone.classList.remove("dragging");
    const transfer = event.dataTransfer;
    if (!transfer) return;
    if (transfer.files && transfer.files.length) {
      searchByFile(transfer.files[0]);
      return;
    }
    // An image dragged from another page arrives as its address.
    const url = (transfer.getData("text/uri-list") || transfer.getData("text/plain") || "").trim();
    if (/^https?:\/\//i.test(url)) {
      el.imageUrl.value = url;
      runSearch(urlSearch(url));
    }
  });
  // A file dropped next to the zone would otherwise replace the page with the image.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  el.uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    const files = Array.from(el.uploadFiles.files);
    if (!files.length) return;
    const tags = el.uploadTags.value;
    el.uploadResults.replaceChildren();
    let done = 0;
    for (const file of files) {
      say(`Adding ${file.name}…`);
      const form = new FormData();
      form.append("file", file, file.name);
      if (tags.trim()) form.append("tags", tags);
      try {
        const record = await api("images", { method: "POST", form });
        el.uploadResults.append(uploadItem(file.name, record));
        done += 1;
      } catch (err) {
        const li = document.createElement("li");
        li.className = "upload-failed";
        li.textContent = `${file.name}: ${err.status ? `${err.status} ${err.code}: ` : ""}${err.message}`;
        el.uploadResults.append(li);
        showError(err);
      }
    }
    say(`${done} of ${files.length} image${files.length === 1 ? "" : "s"} uploaded`);
    el.uploadForm.reset();
  });

  // Captions are written after the upload in background mode: a pending one says so,
  // and the next search shows it once the caption worker has written it.
  function captionText(image) {
    if (image.caption) return image.caption;
    if (image.caption_status === "pending") return "(caption pending)";
    if (image.caption_status === "failed") return "(captioning failed)";
    return "(no caption)";
  }

  function uploadItem(name, record) {
    const li = document.createElement("li");
    li.className = "uploaded";
    li.dataset.id = record.id;
    const img = document.createElement("img");
    img.alt = record.caption || "";
    img.width = 64;
    img.height = 64;
    setImage(img, `images/${encodeURIComponent(record.id)}/thumbnail?size=128`);
    const text = document.createElement("span");
    let outcome = record.duplicate ? "already indexed (duplicate)" : "added";
    const near = record.near_duplicate_of;
    if (near && near.id) outcome += `; near duplicate of ${near.id} (score ${fmt(near.score)})`;
    const said = record.caption ? `“${record.caption}”` : captionText(record);
    text.textContent = `${name}: ${outcome}: ${said}`;
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = "Open";
    open.setAttribute("aria-label", `Open ${name}`);
    open.addEventListener("click", () => openViewer(record));
    li.append(img, text, open);
    return li;
  }

  // -- API key -------------------------------------------------------------------------

  el.apiKey.value = apiKey;
  el.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = el.apiKey.value.trim();
    try {
      if (apiKey) localStorage.setItem(KEY_STORAGE, apiKey);
      else localStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      // Not stored; still used until the page is closed.
    }
    say(apiKey ? "API key saved in this browser." : "API key forgotten.");
  });
  el.keyClear.addEventListener("click", () => {
    apiKey = "";
    el.apiKey.value = "";
    try {
      localStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      // Nothing stored.
    }
    say("API key forgotten.");
  });
})();
