// halo tokenize: encodes text with a tokenizer.json, printing the ids or the tokens;
// for a file, the count of tokens, the encoding rate (one pass, the word cache cold at
// the start; with --lines each line is a document and --threads encode them in
// parallel), and whether decoding gives the text back.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "text/tokenizer.h"

namespace halo::cli {

namespace {

// A token's string, quoted, control characters escaped.
std::string quoted(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

void print_ids(const std::vector<uint32_t>& ids) {
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) {
    line += (i ? " " : "") + std::to_string(ids[i]);
    if (line.size() > (1 << 16)) {
      std::fputs(line.c_str(), stdout);
      line.clear();
    }
  }
  std::printf("%s\n", line.c_str());
}

void print_tokens(const Tokenizer& tok, const std::vector<uint32_t>& ids) {
  for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%s", i ? " " : "", quoted(tok.id_to_token(ids[i])).c_str());
  std::printf("\n");
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int tokenize(const std::vector<std::string>& argv) {
  Args args(argv, {"ids", "no-special", "add-special", "lines", "quiet"});
  const std::string path = args.get("tokenizer", ""), text = args.get("text", ""), file = args.get("file", "");
  const bool ids_only = args.has("ids"), lines = args.has("lines"), quiet = args.has("quiet");
  const long long threads = args.get_int("threads", 1);
  EncodeOptions options;
  options.parse_special = !args.has("no-special");
  options.add_special_tokens = args.has("add-special");
  args.check_all_used({"tokenizer", "text", "file", "ids", "no-special", "add-special", "lines", "threads", "quiet"});
  HALO_CHECK(!path.empty(), "tokenize: --tokenizer DIR|FILE is required (a tokenizer.json or its directory)");
  HALO_CHECK(args.has("text") != !file.empty(), "tokenize: give one of --text STRING and --file FILE");
  HALO_CHECK(threads >= 0, "tokenize: --threads must be >= 0 (0: all cores)");
  HALO_CHECK(!lines || !file.empty(), "tokenize: --lines applies to --file");

  auto start = std::chrono::steady_clock::now();
  const Tokenizer tok = Tokenizer::load(path);
  const double load_s = seconds_since(start);
  if (!quiet) std::fprintf(stderr, "tokenizer: %s (loaded in %.2f s)\n", tok.describe().c_str(), load_s);

  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    HALO_CHECK(in, "tokenize: cannot open ", file);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string data = ss.str();
    std::vector<std::string_view> docs;  // --lines: each line its own document
    if (lines) {
      for (size_t pos = 0; pos < data.size();) {
        const size_t nl = data.find('\n', pos);
        const size_t end = nl == std::string::npos ? data.size() : nl + 1;
        docs.push_back(std::string_view(data).substr(pos, end - pos));
        pos = end;
      }
    }
    std::vector<uint32_t> ids;
    start = std::chrono::steady_clock::now();
    if (lines) {
      for (auto& d : tok.encode_batch(docs, options, static_cast<int>(threads)))
        ids.insert(ids.end(), d.begin(), d.end());
    } else {
      tok.encode_append(data, ids, options);
    }
    const double encode_s = seconds_since(start);
    if (ids_only) print_ids(ids);
    const bool round_trip = tok.decode(ids, false) == data;
    const double mb = static_cast<double>(data.size()) / 1e6;
    std::fprintf(ids_only ? stderr : stdout,
                 "%s: %.2f MB, %zu tokens (%.2f bytes/token) in %.3f s: %.1f MB/s, %.2f M tokens/s%s; "
                 "decode(encode(text)) == text: %s\n",
                 file.c_str(), mb, ids.size(), ids.empty() ? 0.0 : static_cast<double>(data.size()) / ids.size(),
                 encode_s, mb / encode_s, ids.size() / encode_s / 1e6,
                 lines ? (", lines as documents on " + std::to_string(threads) + " threads").c_str() : "",
                 round_trip ? "yes" : "no");
    return 0;
  }
  const std::vector<uint32_t> ids = tok.encode(text, options);
  if (ids_only) {
    print_ids(ids);
  } else {
    print_tokens(tok, ids);
    print_ids(ids);
  }
  return 0;
}

}  // namespace halo::cli
