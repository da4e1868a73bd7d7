// Upload one file to a tus server with tus-js-client, as a Node.js program.
//   node upload.mjs ENDPOINT TOKEN FILE [--parallel N] [--interrupt-at BYTES]
//                   [--chunk-size BYTES]
// --interrupt-at aborts the upload once that many bytes are acknowledged and
// resumes it with a new Upload from the same URL (the client's own resume
// path: HEAD, then PATCH from the server's offset). Prints one JSON line:
// {"url": ..., "resumedFrom": ...}.
import fs from "node:fs";
import path from "node:path";
import * as tus from "tus-js-client";

const [endpoint, token, file, ...rest] = process.argv.slice(2);
const option = (name) => {
  const i = rest.indexOf(name);
  return i >= 0 ? Number(rest[i + 1]) : undefined;
};
const parallel = option("--parallel");
const interruptAt = option("--interrupt-at");
const chunkSize = option("--chunk-size");
const data = fs.readFileSync(file);

function start(uploadUrl, onProgress) {
  return new Promise((resolve, reject) => {
    const options = {
      endpoint,
      headers: { Authorization: `Bearer ${token}` },
      metadata: { filename: path.basename(file) },
      retryDelays: [0, 500, 1000, 2000, 4000, 8000],
      storeFingerprintForResuming: false,
      onError: reject,
      onSuccess: () => resolve({ upload, done: true }),
      onProgress: (sent) => onProgress && onProgress(upload, sent, resolve),
    };
    // An option given as undefined replaces the client's default: leave
    // unset ones out.
    if (uploadUrl !== undefined) options.uploadUrl = uploadUrl;
    if (parallel !== undefined) options.parallelUploads = parallel;
    if (chunkSize !== undefined) options.chunkSize = chunkSize;
    const upload = new tus.Upload(data, options);
    upload.start();
  });
}

let resumedFrom = null;
let first = await start(undefined, (upload, sent, resolve) => {
  if (interruptAt !== undefined && sent >= interruptAt && resumedFrom === null) {
    resumedFrom = sent;
    upload.abort().then(() => resolve({ upload, done: false }));
  }
});
if (!first.done) {
  first = await start(first.upload.url);
}
console.log(JSON.stringify({ url: first.upload.url, resumedFrom }));
