// The loader's Node.js host: everything that needs node.h, V8 or libuv,
// and nothing else (the rest of the loader is Rust over N-API).
//
// - resty_node_run: starts Node on the calling thread (the loader's own
//   "node" thread, every signal blocked) with its own V8 platform, no
//   inspector, none of Node's signal handlers, no stdio set-up, and runs
//   the loader's bootstrap script; reports through `ready`, then runs the
//   event loop for the life of the process;
// - resty_uv_*: a readable-fd watch and an idle handle on Node's loop, for
//   the handler style (see src/serve.rs).
//
// libnode is not linked: its symbols are bound lazily once the loader has
// dlopened it RTLD_GLOBAL (see build.rs). Only functions are called from
// here, never data symbols, so nothing needs binding at load time.

#include <node.h>
#include <uv.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace {

using node::CommonEnvironmentSetup;
using node::Environment;
using node::MultiIsolatePlatform;

constexpr auto kProcessFlags = static_cast<node::ProcessInitializationFlags::Flags>(
    node::ProcessInitializationFlags::kNoDefaultSignalHandling |
    node::ProcessInitializationFlags::kNoStdioInitialization |
    node::ProcessInitializationFlags::kNoInitializeV8 |
    node::ProcessInitializationFlags::kNoInitializeNodeV8Platform |
    node::ProcessInitializationFlags::kNoAdjustResourceLimits |
    node::ProcessInitializationFlags::kNoUseLargePages |
    node::ProcessInitializationFlags::kNoPrintHelpOrVersionOutput |
    node::ProcessInitializationFlags::kDisableNodeOptionsEnv);

constexpr auto kEnvFlags = static_cast<node::EnvironmentFlags::Flags>(
    node::EnvironmentFlags::kDefaultFlags | node::EnvironmentFlags::kNoCreateInspector);

typedef void (*resty_uv_cb)(void* data);

// A handle with the callback it runs; the handle comes first, so a
// handle's address is its holder's.
struct Watch {
  uv_poll_t poll;
  resty_uv_cb cb;
  void* data;
};
struct Idle {
  uv_idle_t idle;
  resty_uv_cb cb;
  void* data;
};

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) {
    if (!out.empty()) out += "; ";
    out += s;
  }
  return out;
}

}  // namespace

extern "C" {

typedef void (*resty_node_ready_fn)(void* data, int ok, const char* msg);
typedef void (*resty_node_exit_fn)(int code);

// Starts Node with `args` (args[0] is the program name, Node's own options
// follow) on this thread and runs `bootstrap` as its main script, with the
// N-API module `binding` linked in as process._linkedBinding("resty_ffi")
// (in every worker_thread too). Calls ready(data, 1, "") once the script
// ran, then runs the event loop until it has nothing left (never, while the
// loader keeps its thread-safe function). On failure calls
// ready(data, 0, why) and returns 1. process.exit() in the main thread
// calls on_exit(code).
__attribute__((visibility("default"))) int resty_node_run(
    const char* const* args, int nargs, const char* bootstrap,
    napi_addon_register_func binding, resty_node_ready_fn ready,
    void* ready_data, resty_node_exit_fn on_exit, int platform_threads) {
  std::vector<std::string> argv(args, args + nargs);
  std::unique_ptr<node::InitializationResult> init =
      node::InitializeOncePerProcess(argv, kProcessFlags);
  if (init->early_return() != 0 || !init->errors().empty()) {
    std::string why = "Node refused its options (" + join(argv) + "): " +
                      join(init->errors());
    ready(ready_data, 0, why.c_str());
    return 1;
  }
  std::unique_ptr<MultiIsolatePlatform> platform =
      MultiIsolatePlatform::Create(platform_threads);
  v8::V8::InitializePlatform(platform.get());
  v8::V8::Initialize();

  std::vector<std::string> errors;
  std::unique_ptr<CommonEnvironmentSetup> setup = CommonEnvironmentSetup::Create(
      platform.get(), &errors, init->args(), init->exec_args(), kEnvFlags);
  if (!setup) {
    std::string why = "cannot create a Node environment: " + join(errors);
    ready(ready_data, 0, why.c_str());
    return 1;
  }
  v8::Isolate* isolate = setup->isolate();
  Environment* env = setup->env();
  int rc = 0;
  {
    v8::Locker locker(isolate);
    v8::Isolate::Scope isolate_scope(isolate);
    v8::HandleScope handle_scope(isolate);
    v8::Context::Scope context_scope(setup->context());

    node::AddLinkedBinding(env, "resty_ffi", binding);
    node::SetProcessExitHandler(
        env, [on_exit](Environment*, int code) { on_exit(code); });
    v8::TryCatch try_catch(isolate);
    v8::MaybeLocal<v8::Value> ret = node::LoadEnvironment(env, bootstrap);
    if (ret.IsEmpty()) {
      std::string why = "the loader's bootstrap script failed";
      if (try_catch.HasCaught()) {
        v8::String::Utf8Value text(isolate, try_catch.Exception());
        if (*text) why += std::string(": ") + *text;
      }
      ready(ready_data, 0, why.c_str());
      return 1;
    }
    ready(ready_data, 1, "");
    rc = node::SpinEventLoop(env).FromMaybe(1);
    node::Stop(env);
  }
  return rc;
}

// A watch for `fd` becoming readable on `loop`: cb(data) on the loop's
// thread each time. NULL on failure.
__attribute__((visibility("default"))) void* resty_uv_watch(void* loop, int fd,
                                                            resty_uv_cb cb,
                                                            void* data) {
  auto* w = new Watch{{}, cb, data};
  if (uv_poll_init(static_cast<uv_loop_t*>(loop), &w->poll, fd) != 0) {
    delete w;
    return nullptr;
  }
  w->poll.data = w;
  uv_poll_start(&w->poll, UV_READABLE, [](uv_poll_t* p, int, int) {
    auto* w = static_cast<Watch*>(p->data);
    w->cb(w->data);
  });
  return &w->poll;
}

// Stops and closes a watch (its memory is freed once libuv is done).
__attribute__((visibility("default"))) void resty_uv_unwatch(void* watch) {
  auto* p = static_cast<uv_poll_t*>(watch);
  uv_poll_stop(p);
  uv_close(reinterpret_cast<uv_handle_t*>(p),
           [](uv_handle_t* h) { delete static_cast<Watch*>(h->data); });
}

// An idle handle on `loop`: while started, the loop does not block and
// calls cb(data) once per iteration. Created stopped. NULL on failure.
__attribute__((visibility("default"))) void* resty_uv_idle_new(void* loop,
                                                               resty_uv_cb cb,
                                                               void* data) {
  auto* i = new Idle{{}, cb, data};
  if (uv_idle_init(static_cast<uv_loop_t*>(loop), &i->idle) != 0) {
    delete i;
    return nullptr;
  }
  i->idle.data = i;
  return &i->idle;
}

__attribute__((visibility("default"))) void resty_uv_idle_start(void* idle) {
  uv_idle_start(static_cast<uv_idle_t*>(idle), [](uv_idle_t* h) {
    auto* i = static_cast<Idle*>(h->data);
    i->cb(i->data);
  });
}

__attribute__((visibility("default"))) void resty_uv_idle_stop(void* idle) {
  uv_idle_stop(static_cast<uv_idle_t*>(idle));
}

// Stops and closes an idle handle (freed once libuv is done).
__attribute__((visibility("default"))) void resty_uv_idle_close(void* idle) {
  auto* h = static_cast<uv_idle_t*>(idle);
  uv_idle_stop(h);
  uv_close(reinterpret_cast<uv_handle_t*>(h),
           [](uv_handle_t* h) { delete static_cast<Idle*>(h->data); });
}

}  // extern "C"
