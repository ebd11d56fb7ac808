// trustplane-extauthz: the compiled gRPC front of Envoy's `Authorization/Check`.
//
// Why it exists: through grpcio's Python server, every unary call costs the serving process
// about 250 µs of interpreter time before trustplane's own handler runs (measured in
// docs/benchmarks.md). That per-call cost, not the decision, is what sets the latency tail at
// 1,000 calls/s on a small machine. This front terminates gRPC with grpc++ (Debian's
// libgrpc++) and hands each call's bytes to the serving process over a private unix socket;
// the serving process parses and answers them with the generated xds-protos classes, exactly
// as the grpc.aio transport does. The front holds no policy and makes no decision: it knows
// one method name and moves opaque bytes.
//
// Fail closed: a call the serving process has not answered within --timeout-ms ends with
// UNAVAILABLE (Envoy denies it unless failure_mode_allow is set, which it must not be), and so
// does a call that finds 16 MiB of calls still queued for a serving process that is not
// reading. No gRPC thread ever waits on the socket: one thread writes, one reads. If the
// serving process's end of the socket closes, every waiting call ends UNAVAILABLE and the front
// exits: its parent restarts it with a new socket. Any other method is UNIMPLEMENTED.
//
// The socket is one end of a socketpair the parent made (--backend-fd): no path on disk, so
// no other process can reach the serving process through it.
//
// Wire format on the socket, little-endian:
//   call   → u32 length, u64 id, u16 peer length, peer (grpc's "ipv4:a.b.c.d:port"),
//            u16 credential length, credential (the call's `authorization` metadata, which
//            authenticates the calling PEP; empty when absent), message
//   answer ← u32 length, u64 id, u8 kind (0: message is a CheckResponse; 1: message is an
//            error text, the call ends INVALID_ARGUMENT), message
// `length` counts the bytes after itself.
//
// Usage: trustplane-extauthz --listen HOST:PORT --backend-fd FD --max-frame BYTES [--timeout-ms N]
// The frame limit is the serving process's (native.py MAX_FRAME), passed here so it lives in one place.
// Prints "ready PORT" on stdout once it serves; exits when stdin closes (its parent is gone).

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <dirent.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

const char kMethod[] = "/envoy.service.auth.v3.Authorization/Check";
constexpr size_t kMaxQueued = 16u << 20;  // calls not yet written to a serving process that lags

struct Args {
  std::string listen;
  int backend_fd = -1;
  int timeout_ms = 5000;
  int max_frame = 0;
};

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "trustplane-extauthz: %s\n", message.c_str());
  std::exit(2);
}

int Number(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  errno = 0;
  long n = std::strtol(value.c_str(), &end, 10);
  if (errno != 0 || end == value.c_str() || *end != '\0' || n < 0 || n > 1 << 30) {
    Fail(flag + " needs a non-negative integer, not '" + value + "'");
  }
  return static_cast<int>(n);
}

Args Parse(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (i + 1 >= argc) Fail("missing value for " + flag);
    std::string value = argv[++i];
    if (flag == "--listen") {
      args.listen = value;
    } else if (flag == "--backend-fd") {
      args.backend_fd = Number(flag, value);
    } else if (flag == "--max-frame") {
      args.max_frame = Number(flag, value);
    } else if (flag == "--timeout-ms") {
      args.timeout_ms = Number(flag, value);
    } else {
      Fail("unknown flag " + flag);
    }
  }
  if (args.listen.empty() || args.backend_fd < 0) Fail("--listen and --backend-fd are required");
  if (args.timeout_ms <= 0) Fail("--timeout-ms must be positive");
  if (args.max_frame < 9) Fail("--max-frame is required (at least 9 bytes)");
  return args;
}

void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t GetU(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

class CheckReactor;

// The one connection to the serving process, and the calls waiting for its answer.
class Backend {
 public:
  Backend(int fd, int timeout_ms, uint32_t max_frame)
      : fd_(fd), timeout_ms_(timeout_ms), max_frame_(max_frame) {}

  void Start() {
    std::thread([this] { Run(); }).detach();
    std::thread([this] { Write(); }).detach();
  }

  // Queues a call for the serving process; false if it cannot be (not connected, or the
  // queue is full because the serving process is not reading): the caller then fails closed.
  // Never blocks, so gRPC's threads keep serving (and timing out) whatever the socket does.
  bool Send(uint64_t id, CheckReactor* call, const std::string& peer,
            const std::string& credential, const std::string& message);
  // The answer of `id` no longer matters (the call was cancelled or timed out).
  CheckReactor* Take(uint64_t id);

 private:
  struct Waiting {
    CheckReactor* call;
    Clock::time_point due;
  };

  void Run();
  void Write();
  void ReadAnswers(int fd);
  void FailAll(const char* why);
  void ExpireOverdue();

  int fd_;
  int timeout_ms_;
  uint32_t max_frame_;  // answers longer than this are not our peer's framing
  std::mutex mu_;  // guards waiting_ and lost_
  bool lost_ = false;
  std::map<uint64_t, Waiting> waiting_;
  std::mutex out_mu_;  // guards out_; never held while the socket is written
  std::condition_variable out_ready_;
  std::string out_;  // frames not yet written, at most kMaxQueued bytes
};

class CheckReactor final : public grpc::ServerGenericBidiReactor {
 public:
  CheckReactor(grpc::GenericCallbackServerContext* ctx, Backend* backend, uint64_t id)
      : ctx_(ctx), backend_(backend), id_(id) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no CheckRequest was sent"));
      return;
    }
    std::vector<grpc::Slice> slices;
    std::string message;
    if (!request_.Dump(&slices).ok()) {
      End(grpc::Status(grpc::StatusCode::INTERNAL, "could not read the request"));
      return;
    }
    for (const auto& s : slices) message.append(reinterpret_cast<const char*>(s.begin()), s.size());
    std::string credential;
    const auto& metadata = ctx_->client_metadata();
    auto found = metadata.find("authorization");
    if (found != metadata.end()) credential.assign(found->second.data(), found->second.size());
    if (!backend_->Send(id_, this, ctx_->peer(), credential, message)) {
      End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "trustplane decision service unavailable"));
    }
  }

  // The serving process answered (kind 0: a CheckResponse; 1: an error text).
  void Answer(int kind, std::string message) {
    if (kind != 0) {
      End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message));
      return;
    }
    grpc::Slice slice(message);
    response_ = grpc::ByteBuffer(&slice, 1);
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void Unavailable(const char* why) {
    End(grpc::Status(grpc::StatusCode::UNAVAILABLE, why));
  }

  void OnCancel() override {
    // The caller went away. If the answer is still awaited, nobody will use it: end here.
    if (backend_->Take(id_) == this) End(grpc::Status::CANCELLED);
  }

  void OnDone() override { delete this; }

 private:
  void End(const grpc::Status& status) { Finish(status); }

  grpc::GenericCallbackServerContext* ctx_;
  Backend* backend_;
  uint64_t id_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
};

bool Backend::Send(uint64_t id, CheckReactor* call, const std::string& peer,
                   const std::string& credential, const std::string& message) {
  std::string frame;
  uint16_t peer_len = static_cast<uint16_t>(std::min<size_t>(peer.size(), 0xffff));
  // A credential longer than 64 KiB is no PEP's: sent empty, the call is judged without one.
  uint16_t credential_len = credential.size() <= 0xffff ? static_cast<uint16_t>(credential.size()) : 0;
  frame.reserve(4 + 8 + 2 + peer_len + 2 + credential_len + message.size());
  PutU32(frame, static_cast<uint32_t>(8 + 2 + peer_len + 2 + credential_len + message.size()));
  PutU64(frame, id);
  frame.push_back(static_cast<char>(peer_len & 0xff));
  frame.push_back(static_cast<char>(peer_len >> 8));
  frame.append(peer, 0, peer_len);
  frame.push_back(static_cast<char>(credential_len & 0xff));
  frame.push_back(static_cast<char>(credential_len >> 8));
  frame.append(credential, 0, credential_len);
  frame.append(message);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (lost_) return false;
    // Waiting before queued: the answer can only come after the frame is written.
    waiting_[id] = Waiting{call, Clock::now() + std::chrono::milliseconds(timeout_ms_)};
  }
  bool queued = false;
  {
    std::lock_guard<std::mutex> lock(out_mu_);
    if (out_.size() + frame.size() <= kMaxQueued) {
      out_.append(frame);
      queued = true;
    }
  }
  if (queued) {
    out_ready_.notify_one();
    return true;
  }
  // Not queued: end the call here unless a timeout or a lost connection already took it.
  return Take(id) != call;
}

void Backend::Write() {
  std::string writing;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(out_mu_);
      out_ready_.wait(lock, [this] { return !out_.empty(); });
      writing.swap(out_);
    }
    size_t sent = 0;
    while (sent < writing.size()) {
      ssize_t n = ::send(fd_, writing.data() + sent, writing.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::shutdown(fd_, SHUT_RDWR);  // the reader sees it, fails every call, and the front exits
        return;
      }
      sent += static_cast<size_t>(n);
    }
    writing.clear();
  }
}

CheckReactor* Backend::Take(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = waiting_.find(id);
  if (it == waiting_.end()) return nullptr;
  CheckReactor* call = it->second.call;
  waiting_.erase(it);
  return call;
}

void Backend::Run() {
  ReadAnswers(fd_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    lost_ = true;
  }
  FailAll("trustplane decision service connection lost");
  std::fprintf(stderr, "trustplane-extauthz: the serving process closed its socket; exiting\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let the failures go out
  std::_Exit(3);
}

void Backend::ReadAnswers(int fd) {
  std::string buffer;
  std::vector<char> chunk(1 << 16);
  while (true) {
    pollfd p{fd, POLLIN, 0};
    int ready = ::poll(&p, 1, 100);
    ExpireOverdue();
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    ssize_t n = ::recv(fd, chunk.data(), chunk.size(), 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return;
    }
    buffer.append(chunk.data(), static_cast<size_t>(n));
    size_t at = 0;
    while (buffer.size() - at >= 4) {
      const auto* head = reinterpret_cast<const unsigned char*>(buffer.data() + at);
      uint32_t length = static_cast<uint32_t>(GetU(head, 4));
      if (length < 9 || length > max_frame_) return;  // not our peer's framing: reconnect
      if (buffer.size() - at < 4 + static_cast<size_t>(length)) break;
      uint64_t id = GetU(head + 4, 8);
      int kind = head[12];
      std::string message(buffer.data() + at + 13, length - 9);
      at += 4 + length;
      if (CheckReactor* call = Take(id)) call->Answer(kind, std::move(message));
    }
    buffer.erase(0, at);
  }
}

void Backend::FailAll(const char* why) {
  std::map<uint64_t, Waiting> calls;
  {
    std::lock_guard<std::mutex> lock(mu_);
    calls.swap(waiting_);
  }
  for (auto& [id, waiting] : calls) waiting.call->Unavailable(why);
}

void Backend::ExpireOverdue() {
  std::vector<CheckReactor*> overdue;
  auto now = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (it->second.due <= now) {
        overdue.push_back(it->second.call);
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (CheckReactor* call : overdue) call->Unavailable("trustplane decision service timed out");
}

class ExtAuthz final : public grpc::CallbackGenericService {
 public:
  explicit ExtAuthz(Backend* backend) : backend_(backend) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    if (ctx->method() != kMethod) {
      class Unimplemented final : public grpc::ServerGenericBidiReactor {
       public:
        explicit Unimplemented(const std::string& method) {
          Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "unknown method " + method));
        }
        void OnDone() override { delete this; }
      };
      return new Unimplemented(ctx->method());
    }
    return new CheckReactor(ctx, backend_, next_id_.fetch_add(1));
  }

 private:
  Backend* backend_;
  std::atomic<uint64_t> next_id_{1};
};

}  // namespace

// Close every descriptor but stdio and the backend socket: a parent's listening sockets (uvicorn's,
// with --workers) must not stay open in the front, whatever the spawning loop left inheritable.
void CloseInherited(int keep) {
  std::vector<int> open;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (dirent* entry = ::readdir(dir)) {
      int fd = std::atoi(entry->d_name);
      if (fd > 2 && fd != keep && fd != ::dirfd(dir)) open.push_back(fd);
    }
    ::closedir(dir);
  }
  for (int fd : open) ::close(fd);
}

int main(int argc, char** argv) {
  Args args = Parse(argc, argv);
  CloseInherited(args.backend_fd);
  Backend backend(args.backend_fd, args.timeout_ms, static_cast<uint32_t>(args.max_frame));
  backend.Start();
  ExtAuthz service(&backend);
  int port = 0;
  grpc::ServerBuilder builder;
  // Several serving processes (`--workers N`) each run a front on the same port.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 1);
  builder.AddListeningPort(args.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) Fail("could not listen on " + args.listen);
  std::printf("ready %d\n", port);
  std::fflush(stdout);
  // The parent holds our stdin: when it is gone, so are we.
  char byte;
  while (true) {
    ssize_t n = ::read(0, &byte, 1);
    if (n > 0 || (n < 0 && errno == EINTR)) continue;
    break;
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  // Not a return: the backend's threads still run, and must not outlive what they use.
  std::fflush(stderr);
  std::_Exit(0);
}
