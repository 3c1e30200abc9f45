// Node.js echo runtimes for resty-ffi's benchmarks (benches/run.py).
//
// - compat: lua-resty-ffi's API (require("resty_ffi")) in one
//   worker_thread that polls, reads and answers each task itself;
// - handler: the loader's handler style, `(req) => req` on Node's main
//   thread.
const { Worker, isMainThread, workerData } = require('worker_threads');
const ffi = require('resty_ffi');

if (isMainThread) {
  exports.compat = (cfg, tq) => {
    new Worker(__filename, { workerData: tq });
    return 0;
  };
  exports.handler = () => (req) => req;
} else {
  const tq = workerData;
  for (;;) {
    const task = ffi.poll_task(tq);
    if (task == 0) break;
    ffi.respond(task, 0, ffi.get_req_buf(task));
  }
}
