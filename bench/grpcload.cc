// gRPC load generator for Envoy's Authorization/Check, compiled (grpc++ from Debian's
// libgrpc++-dev): the same job as bench/grpcload.py without a Python interpreter's own pauses
// (GIL hand-overs between the scheduling thread and gRPC's callback threads, garbage
// collection) counted as server latency.
//
// The calls are opaque: each line of --requests is one serialized CheckRequest in hex, written
// by bench/grpcload.py --dump-requests, so this file needs no generated protobuf code. Calls
// go through grpc::GenericStub's callback API on one channel (one HTTP/2 connection, as Envoy
// keeps to its ext_authz cluster).
//
// Open loop (--rate R > 0): call i is due at start + i/R whatever happened before; its latency
// is measured from that scheduled time (no coordinated omission). Closed loop (--rate 0):
// --concurrency callers each send the next call as soon as they have an answer.
// Prints one JSON document, the same fields as bench/grpcload.py. Loopback targets only.
//
// Build: g++ -O2 -std=c++17 grpcload.cc -o grpcload $(pkg-config --cflags --libs grpc++)

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <array>
#include <functional>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
// gRPC deadlines are wall-clock time points; schedules use the monotonic clock.
std::chrono::system_clock::time_point In(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(
             std::chrono::duration<double>(seconds));
}

const char kMethod[] = "/envoy.service.auth.v3.Authorization/Check";

struct Args {
  std::string target;
  std::string requests;
  double rate = 1000;
  double duration = 10;
  int concurrency = 16;
  double grace = 5;
};

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "grpcload: %s\n", message.c_str());
  std::exit(2);
}

Args Parse(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (i + 1 >= argc) Fail("missing value for " + flag);
    std::string value = argv[++i];
    if (flag == "--target") args.target = value;
    else if (flag == "--requests") args.requests = value;
    else if (flag == "--rate") args.rate = std::stod(value);
    else if (flag == "--duration") args.duration = std::stod(value);
    else if (flag == "--concurrency") args.concurrency = std::stoi(value);
    else if (flag == "--grace") args.grace = std::stod(value);
    else Fail("unknown flag " + flag);
  }
  if (args.target.rfind("127.0.0.1:", 0) != 0 && args.target.rfind("localhost:", 0) != 0)
    Fail("load is only sent to the loopback interface");
  if (!(args.duration > 0 && args.duration <= 600)) Fail("--duration must be in (0, 600]");
  if (args.requests.empty()) Fail("--requests FILE is required");
  return args;
}

std::vector<std::string> ReadRequests(const std::string& path) {
  std::ifstream file(path);
  if (!file) Fail("cannot open " + path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(file, line)) {
    if (line.empty()) continue;
    if (line.size() % 2) Fail("odd-length hex line in " + path);
    std::string bytes;
    for (size_t i = 0; i < line.size(); i += 2)
      bytes.push_back(static_cast<char>(std::stoi(line.substr(i, 2), nullptr, 16)));
    out.push_back(bytes);
  }
  if (out.empty()) Fail("no requests in " + path);
  return out;
}

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// CheckResponse.status (field 1, google.rpc.Status) .code (field 1, varint); absent = 0 (OK).
int StatusCode(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return -1;
  std::string data;
  for (const auto& s : slices) data.append(reinterpret_cast<const char*>(s.begin()), s.size());
  auto varint = [&](size_t& at) -> uint64_t {
    uint64_t value = 0;
    for (int shift = 0; at < data.size() && shift < 64; shift += 7) {
      uint8_t b = static_cast<uint8_t>(data[at++]);
      value |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) break;
    }
    return value;
  };
  size_t at = 0;
  while (at < data.size()) {
    uint64_t key = varint(at);
    int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
    if (wire == 0) { varint(at); continue; }
    if (wire != 2) return -1;  // CheckResponse uses no fixed-width fields
    size_t length = static_cast<size_t>(varint(at)), end = at + length;
    if (field == 1) {
      while (at < end) {
        uint64_t inner = varint(at);
        if (inner == 0x08) return static_cast<int>(varint(at));
        if ((inner & 7) == 0) varint(at);
        else if ((inner & 7) == 2) at += static_cast<size_t>(varint(at));
        else return -1;
      }
      return 0;
    }
    at = end;
  }
  return 0;
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return NAN;
  long rank = static_cast<long>(std::ceil(p / 100.0 * sorted.size() - 1e-9));
  rank = std::max(1L, std::min(static_cast<long>(sorted.size()), rank));
  return sorted[rank - 1];
}

std::string Summary(std::vector<double> answered, size_t lost) {
  std::sort(answered.begin(), answered.end());
  answered.insert(answered.end(), lost, INFINITY);
  std::ostringstream out;
  out << "{";
  const std::pair<const char*, double> points[] = {
      {"p50", 50}, {"p90", 90}, {"p99", 99}, {"p999", 99.9}, {"max", 100}};
  bool first = true;
  for (const auto& [name, p] : points) {
    double v = Percentile(answered, p);
    out << (first ? "" : ", ") << "\"" << name << "\": ";
    first = false;
    if (std::isinf(v) || std::isnan(v)) out << "null";
    else out << std::round(v * 1e6) / 1e3;  // seconds -> ms, 3 decimals
  }
  out << "}";
  return out.str();
}

std::string Codes(const std::map<int, long>& codes) {
  std::ostringstream out;
  out << "{";
  bool first = true;
  for (const auto& [code, n] : codes) {
    out << (first ? "" : ", ") << "\"" << code << "\": " << n;
    first = false;
  }
  out << "}";
  return out.str();
}

struct Call {
  grpc::ClientContext context;
  grpc::ByteBuffer response;
};

void WarmUp(grpc::GenericStub& stub, const std::vector<grpc::ByteBuffer>& calls) {
  for (const auto& request : calls) {
    Call call;
    call.context.set_deadline(In(5));
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    stub.UnaryCall(&call.context, kMethod, grpc::StubOptions(), &request, &call.response,
                   [&](grpc::Status s) {
                     std::lock_guard<std::mutex> lock(m);
                     status = s;
                     done = true;
                     cv.notify_one();
                   });
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return done; });
    if (!status.ok()) Fail("warm-up call failed: " + status.error_message());
  }
}

int OpenLoop(const Args& args, grpc::GenericStub& stub, const std::vector<grpc::ByteBuffer>& calls) {
  const size_t total = static_cast<size_t>(args.rate * args.duration);
  const auto interval = std::chrono::duration<double>(1.0 / args.rate);
  std::vector<double> latency(total, -1);
  std::vector<int> code(total, -2);
  std::vector<std::unique_ptr<Call>> state(total);
  std::atomic<size_t> finished{0};
  std::atomic<long> errors{0};
  std::mutex m;
  std::condition_variable cv;
  const auto start = Clock::now() + std::chrono::milliseconds(50);
  auto due = [&](size_t i) {
    return start + std::chrono::duration_cast<Clock::duration>(interval * static_cast<double>(i));
  };
  for (size_t i = 0; i < total; ++i) {
    std::this_thread::sleep_until(due(i));
    state[i] = std::make_unique<Call>();
    Call* call = state[i].get();
    call->context.set_deadline(In(args.grace));
    stub.UnaryCall(&call->context, kMethod, grpc::StubOptions(), &calls[i % calls.size()],
                   &call->response, [&, i, call](grpc::Status status) {
                     auto at = Clock::now();
                     if (status.ok()) {
                       latency[i] = std::chrono::duration<double>(at - due(i)).count();
                       code[i] = StatusCode(call->response);
                     } else {
                       errors.fetch_add(1);
                     }
                     if (finished.fetch_add(1) + 1 == total) {
                       std::lock_guard<std::mutex> lock(m);
                       cv.notify_one();
                     }
                   });
  }
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait_for(lock, std::chrono::duration<double>(args.grace + 1),
                [&] { return finished.load() == total; });
  }
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> answered;
  std::map<int, long> codes;
  for (size_t i = 0; i < total; ++i) {
    if (latency[i] >= 0) {
      answered.push_back(latency[i]);
      codes[code[i]]++;
    }
  }
  const size_t lost = total - answered.size();
  std::printf(
      "{\"mode\": \"open\", \"client\": \"grpc++ GenericStub, callback API (bench/grpcload.cc)\", "
      "\"rate\": %g, \"duration_s\": %g, \"offered\": %zu, \"answered\": %zu, \"lost\": %zu, "
      "\"errors\": %ld, \"grpc_status_codes\": %s, \"achieved_rps\": %.1f, \"latency_ms\": %s}\n",
      args.rate, args.duration, total, answered.size(), lost, errors.load(), Codes(codes).c_str(),
      wall > 0 ? answered.size() / wall : 0.0, Summary(answered, lost).c_str());
  std::fflush(stdout);
  // Calls still in flight own their state: leave without destroying it.
  if (finished.load() != total) std::_Exit(0);
  return 0;
}

int ClosedLoop(const Args& args, grpc::GenericStub& stub,
               const std::vector<grpc::ByteBuffer>& calls) {
  std::mutex m;
  std::condition_variable cv;
  std::vector<double> latencies;
  long errors = 0;
  int running = args.concurrency;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(args.duration));
  // Two states per caller, used in turn: the next call starts from the callback of the
  // previous one, whose state must outlive that callback.
  std::vector<std::array<std::unique_ptr<Call>, 2>> slots(args.concurrency);
  std::function<void(int, size_t, size_t)> issue = [&](int n, size_t turn, size_t i) {
    auto& slot = slots[n][turn % 2];
    slot = std::make_unique<Call>();
    Call* call = slot.get();
    call->context.set_deadline(In(5));
    const auto sent = Clock::now();
    stub.UnaryCall(&call->context, kMethod, grpc::StubOptions(), &calls[i % calls.size()],
                   &call->response, [&, n, turn, i, sent](grpc::Status status) {
                     const auto at = Clock::now();
                     bool again;
                     {
                       std::lock_guard<std::mutex> lock(m);
                       if (status.ok())
                         latencies.push_back(std::chrono::duration<double>(at - sent).count());
                       else
                         ++errors;
                       again = at < deadline;
                       if (!again && --running == 0) cv.notify_one();
                     }
                     if (again) issue(n, turn + 1, i + args.concurrency);
                   });
  };
  for (int n = 0; n < args.concurrency; ++n) issue(n, 0, static_cast<size_t>(n));
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return running == 0; });
  }
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf(
      "{\"mode\": \"closed\", \"client\": \"grpc++ GenericStub, callback API (bench/grpcload.cc)\", "
      "\"concurrency\": %d, \"duration_s\": %g, \"answered\": %zu, \"errors\": %ld, "
      "\"rps\": %.1f, \"latency_ms\": %s}\n",
      args.concurrency, args.duration, latencies.size(), errors,
      wall > 0 ? latencies.size() / wall : 0.0, Summary(latencies, 0).c_str());
  std::fflush(stdout);
  std::_Exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = Parse(argc, argv);
  std::vector<grpc::ByteBuffer> calls;
  for (const auto& bytes : ReadRequests(args.requests)) calls.push_back(ToBuffer(bytes));
  auto channel = grpc::CreateChannel(args.target, grpc::InsecureChannelCredentials());
  if (!channel->WaitForConnected(In(10)))
    Fail("cannot connect to " + args.target);
  grpc::GenericStub stub(channel);
  WarmUp(stub, calls);
  return args.rate > 0 ? OpenLoop(args, stub, calls) : ClosedLoop(args, stub, calls);
}
