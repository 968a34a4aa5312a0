#include "text/chat_template.h"

#include <algorithm>

#include "core/error.h"
#include "text/unicode.h"

namespace halo {

namespace {

// ---- what a render is made of -----------------------------------------------------------

// One piece of a rendered conversation: a special token of the template
// (emitted as its id) or text (tokenized); counted marks training targets.
struct Piece {
  std::string text;  // the text, or the special token's content
  bool special = false;
  bool counted = false;
};

class Pieces {
 public:
  void special(std::string_view token, bool counted = false) { list.push_back({std::string(token), true, counted}); }
  void text(std::string_view text, bool counted = false) {
    if (!text.empty()) list.push_back({std::string(text), false, counted});
  }
  std::vector<Piece> list;
};

// ---- text helpers ------------------------------------------------------------------------

// Python's str.isspace for one code point (Jinja's trim and str.strip() use it):
// Unicode White_Space plus the separators U+001C..U+001F.
bool is_py_space(uint32_t cp) {
  if (cp >= 0x1C && cp <= 0x1F) return true;
  return cp != text::kInvalidCodePoint && text::is_whitespace(cp, text::UnicodeTable::get().category(cp));
}

// s without leading and trailing white space, as Python's str.strip().
std::string strip(std::string_view s) {
  size_t begin = s.size(), end = 0;  // the first non-space byte, one past the last non-space character
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    const int n = text::utf8_decode(s, i, &cp);
    if (!is_py_space(cp)) {
      begin = std::min(begin, i);
      end = i + static_cast<size_t>(n);
    }
    i += static_cast<size_t>(n);
  }
  return begin < end ? std::string(s.substr(begin, end - begin)) : std::string();
}

// A Jinja string literal's body with its escapes (\n, \t, \\, \', \") resolved.
std::string unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
  }
  return out;
}

bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }

// ---- what a tokenizer's template text adds to its family's layout ---------------------------

// Where a mistral template puts the system message.
enum class SystemAt { first_user, last_user, last_message };

struct TemplateDetails {
  std::string default_system;   // chatml: inserted when a conversation has no system message
  std::string llama3_preamble;  // llama3.1+: the system turn's opening ("Cutting Knowledge Date: ...")
  bool mistral_v3 = false;      // "[INST] USER[/INST] ANSWER</s>"
  bool mistral_trim = false;    // v3: the answer trimmed
  SystemAt mistral_system = SystemAt::first_user;
};

// The literal system turn in a ChatML template, '<|im_start|>system\nTEXT<|im_end|>'
// (a Jinja string, the newline written as \n or as is): TEXT, or "".
std::string chatml_default_system(std::string_view tpl) {
  constexpr std::string_view open = "<|im_start|>system", close = "<|im_end|>";
  for (size_t at = tpl.find(open); at != std::string_view::npos; at = tpl.find(open, at + 1)) {
    if (at == 0 || (tpl[at - 1] != '\'' && tpl[at - 1] != '"')) continue;  // not the start of a literal
    const char quote = tpl[at - 1];
    size_t begin = at + open.size();
    if (tpl.substr(begin, 2) == "\\n")
      begin += 2;
    else if (begin < tpl.size() && tpl[begin] == '\n')
      begin += 1;
    else
      continue;
    const size_t end = tpl.find(close, begin);
    if (end == std::string_view::npos) continue;
    const std::string_view body = tpl.substr(begin, end - begin);
    bool literal = !body.empty();  // no unescaped closing quote inside: the literal runs on to <|im_end|>
    for (size_t i = 0; i < body.size() && literal; ++i) {
      if (body[i] == '\\')
        ++i;
      else if (body[i] == quote)
        literal = false;
    }
    if (literal) return unescape(body);
  }
  return "";
}

// A Jinja string literal that follows `key` in tpl (the text up to the
// closing quote or an escaped / raw newline), or "".
std::string literal_after(std::string_view tpl, std::string_view key) {
  const size_t at = tpl.find(key);
  if (at == std::string_view::npos) return "";
  std::string_view rest = tpl.substr(at + key.size());
  size_t end = 0;
  while (end < rest.size() && rest[end] != '"' && rest[end] != '\'' && rest[end] != '\n' &&
         rest.substr(end, 2) != "\\n")
    ++end;
  return std::string(rest.substr(0, end));
}

TemplateDetails template_details(const Tokenizer& tok, ChatTemplate t) {
  const std::string& tpl = tok.chat_template();
  TemplateDetails d;
  if (t == ChatTemplate::chatml) d.default_system = chatml_default_system(tpl);
  if (t == ChatTemplate::llama3 && contains(tpl, "Cutting Knowledge Date: ")) {
    std::string cutoff = literal_after(tpl, "Cutting Knowledge Date: ");
    std::string date = literal_after(tpl, "date_string = \"");
    if (date.empty()) date = literal_after(tpl, "date_string = '");
    if (cutoff.empty()) cutoff = "December 2023";
    if (date.empty()) date = "26 Jul 2024";
    d.llama3_preamble = "Cutting Knowledge Date: " + cutoff + "\nToday Date: " + date + "\n\n";
  }
  if (t == ChatTemplate::mistral) {
    d.mistral_v3 = contains(tpl, "\"[/INST]\"") || contains(tpl, "'[/INST]'");
    d.mistral_trim = contains(tpl, "]|trim + eos_token") || contains(tpl, "] | trim + eos_token");
    if (contains(tpl, "loop.first and system_message"))
      d.mistral_system = SystemAt::first_user;
    else if (contains(tpl, "loop.last and system_message"))
      d.mistral_system = SystemAt::last_message;
    else if (d.mistral_v3 || contains(tpl, "user_messages[-1]) and system_message"))
      d.mistral_system = SystemAt::last_user;
  }
  return d;
}

// ---- the renderers ---------------------------------------------------------------------------

void check_roles(ChatTemplate t, const std::vector<ChatMessage>& messages) {
  HALO_CHECK(!messages.empty(), "chat template ", chat_template_name(t), ": the conversation has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    HALO_CHECK(r == "system" || r == "user" || r == "assistant", "message ", i, ": unknown role '", r,
               "' (roles are system, user, assistant)");
  }
}

// llama2 / mistral: an optional system message first, then user, assistant, user, ...
void check_alternating(ChatTemplate t, const std::vector<ChatMessage>& messages) {
  const size_t first = messages[0].role == "system" ? 1 : 0;
  for (size_t i = first; i < messages.size(); ++i) {
    const char* want = (i - first) % 2 == 0 ? "user" : "assistant";
    HALO_CHECK(messages[i].role == want, "message ", i, ": the ", chat_template_name(t),
               " template needs roles alternating user, assistant, user, ... after an optional first system "
               "message; got '",
               messages[i].role, "' where '", want, "' belongs");
  }
}

std::string token_or(const std::string& configured, const char* fallback) {
  return configured.empty() ? std::string(fallback) : configured;
}

Pieces render_llama3(const std::vector<ChatMessage>& m, bool gen, const TemplateDetails& d) {
  Pieces p;
  p.special("<|begin_of_text|>");
  const auto header = [&](const std::string& role) {
    p.special("<|start_header_id|>");
    p.text(role);
    p.special("<|end_header_id|>");
  };
  size_t first = 0;
  if (!d.llama3_preamble.empty()) {  // Llama 3.1+: the system turn is always there
    std::string system;
    if (m[0].role == "system") system = strip(m[0].content), first = 1;
    header("system");
    p.text("\n\n" + d.llama3_preamble + system);
    p.special("<|eot_id|>");
  }
  for (size_t i = first; i < m.size(); ++i) {
    const bool assistant = m[i].role == "assistant";
    header(m[i].role);
    p.text("\n\n");
    p.text(strip(m[i].content), assistant);
    p.special("<|eot_id|>", assistant);
  }
  if (gen) {
    header("assistant");
    p.text("\n\n");
  }
  return p;
}

Pieces render_chatml(const std::vector<ChatMessage>& m, bool gen, const TemplateDetails& d) {
  Pieces p;
  const auto turn = [&](const std::string& role, const std::string& content, bool counted) {
    p.special("<|im_start|>");
    p.text(role + "\n");
    p.text(content, counted);
    p.special("<|im_end|>", counted);
    p.text("\n");
  };
  if (m[0].role != "system" && !d.default_system.empty()) turn("system", d.default_system, false);
  for (const ChatMessage& msg : m) turn(msg.role, msg.content, msg.role == "assistant");
  if (gen) {
    p.special("<|im_start|>");
    p.text("assistant\n");
  }
  return p;
}

Pieces render_llama2(const Tokenizer& tok, const std::vector<ChatMessage>& m) {
  const std::string bos = token_or(tok.bos_token(), "<s>"), eos = token_or(tok.eos_token(), "</s>");
  Pieces p;
  const size_t first = m[0].role == "system" ? 1 : 0;
  for (size_t i = first; i < m.size(); ++i) {
    if (m[i].role == "user") {
      std::string content = m[i].content;
      if (i == first && first == 1) content = "<<SYS>>\n" + m[0].content + "\n<</SYS>>\n\n" + content;
      p.special(bos);
      p.text("[INST] " + strip(content) + " [/INST]");
    } else {
      p.text(" ");
      p.text(strip(m[i].content) + " ", true);
      p.special(eos, true);
    }
  }
  return p;
}

Pieces render_mistral(const Tokenizer& tok, const std::vector<ChatMessage>& m, const TemplateDetails& d) {
  const std::string bos = token_or(tok.bos_token(), "<s>"), eos = token_or(tok.eos_token(), "</s>");
  const size_t first = m[0].role == "system" ? 1 : 0;
  // The user message that carries the system message (none: m.size()).
  size_t system_at = m.size();
  if (first == 1) {
    for (size_t i = first; i < m.size(); ++i) {
      if (m[i].role != "user") continue;
      if (d.mistral_system == SystemAt::first_user) {
        system_at = i;
        break;
      }
      system_at = i;  // the last user message so far
    }
    if (d.mistral_system == SystemAt::last_message && system_at != m.size() - 1) system_at = m.size();
  }
  Pieces p;
  p.special(bos);
  for (size_t i = first; i < m.size(); ++i) {
    if (m[i].role == "user") {
      const std::string content = i == system_at ? m[0].content + "\n\n" + m[i].content : m[i].content;
      p.text(d.mistral_v3 ? "[INST] " + content + "[/INST]" : "[INST] " + content + " [/INST]");
    } else if (d.mistral_v3) {
      p.text(" ");
      p.text(d.mistral_trim ? strip(m[i].content) : m[i].content, true);
      p.special(eos, true);
    } else {
      p.text(m[i].content, true);
      p.special(eos, true);
    }
  }
  return p;
}

Pieces render(const Tokenizer& tok, ChatTemplate t, const std::vector<ChatMessage>& messages, bool gen) {
  check_roles(t, messages);
  const TemplateDetails d = template_details(tok, t);
  switch (t) {
    case ChatTemplate::llama3:
      return render_llama3(messages, gen, d);
    case ChatTemplate::chatml:
      return render_chatml(messages, gen, d);
    case ChatTemplate::llama2:
      check_alternating(t, messages);
      return render_llama2(tok, messages);
    case ChatTemplate::mistral:
      check_alternating(t, messages);
      return render_mistral(tok, messages, d);
  }
  HALO_FAIL("unknown chat template");
}

// ---- tokenizing a render ---------------------------------------------------------------------

uint32_t special_id(const Tokenizer& tok, ChatTemplate t, const std::string& token) {
  const auto id = tok.token_to_id(token);
  HALO_CHECK(id, "the ", chat_template_name(t), " chat template needs the token ", token,
             ", which the tokenizer does not have (choose another template)");
  return *id;
}

// The ids of `text` as they come out inside a longer text where the special
// token `before` precedes it and `after` follows ("" for none): the text is
// encoded between the two, which are then dropped, so that the tokenizer sees
// what it sees in the whole render (a segment that does not start the text
// gets no SentencePiece "first" prefix; lstrip / rstrip of the neighbours
// apply).
std::vector<uint32_t> encode_between(const Tokenizer& tok, const std::string& before, const std::string& text,
                                     const std::string& after) {
  if (text.empty()) return {};
  std::vector<uint32_t> ids = tok.encode(before + text + after);
  const auto id_of = [&](const std::string& s) { return s.empty() ? std::nullopt : tok.token_to_id(s); };
  const auto b = id_of(before), a = id_of(after);
  const bool framed = ids.size() >= static_cast<size_t>(b.has_value()) + static_cast<size_t>(a.has_value()) &&
                      (!b || ids.front() == *b) && (!a || ids.back() == *a);
  if (!framed) return tok.encode(text);  // a neighbour merged into the text: take the text alone
  if (a) ids.pop_back();
  if (b) ids.erase(ids.begin());
  return ids;
}

RenderedChat tokenize(const Tokenizer& tok, ChatTemplate t, const std::vector<Piece>& pieces) {
  RenderedChat out;
  for (size_t i = 0; i < pieces.size();) {
    if (pieces[i].special) {
      out.ids.push_back(special_id(tok, t, pieces[i].text));
      out.counted.push_back(pieces[i].counted);
      ++i;
      continue;
    }
    // The text between two special tokens, encoded as one; where it turns from
    // not counted to counted (or back), the tokens from the first one that
    // differs from the encoding of the text before that point take the new flag.
    size_t j = i;
    std::string text;
    std::vector<size_t> starts;  // where each piece begins in `text`
    for (; j < pieces.size() && !pieces[j].special; ++j) {
      starts.push_back(text.size());
      text += pieces[j].text;
    }
    const std::string before = i > 0 ? pieces[i - 1].text : "";
    const std::string after = j < pieces.size() ? pieces[j].text : "";
    const std::vector<uint32_t> ids = encode_between(tok, before, text, after);
    std::vector<uint8_t> counted(ids.size(), pieces[i].counted);
    for (size_t k = i + 1; k < j; ++k) {
      if (pieces[k].counted == pieces[k - 1].counted) continue;
      const std::vector<uint32_t> head = encode_between(tok, before, text.substr(0, starts[k - i]), "");
      const size_t same =
          static_cast<size_t>(std::mismatch(head.begin(), head.end(), ids.begin(), ids.end()).first - head.begin());
      std::fill(counted.begin() + static_cast<std::ptrdiff_t>(same), counted.end(), pieces[k].counted);
    }
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.counted.insert(out.counted.end(), counted.begin(), counted.end());
    i = j;
  }
  return out;
}

}  // namespace

ChatTemplate parse_chat_template(std::string_view name) {
  if (name == "llama3") return ChatTemplate::llama3;
  if (name == "chatml") return ChatTemplate::chatml;
  if (name == "llama2") return ChatTemplate::llama2;
  if (name == "mistral") return ChatTemplate::mistral;
  HALO_FAIL("unknown chat template '", name, "' (known: llama3, chatml, llama2, mistral)");
}

std::string_view chat_template_name(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::llama3:
      return "llama3";
    case ChatTemplate::chatml:
      return "chatml";
    case ChatTemplate::llama2:
      return "llama2";
    case ChatTemplate::mistral:
      return "mistral";
  }
  return "?";
}

std::optional<ChatTemplate> find_chat_template(const Tokenizer& tok) {
  const std::string& tpl = tok.chat_template();
  if (!tpl.empty()) {
    if (contains(tpl, "<|start_header_id|>")) return ChatTemplate::llama3;
    if (contains(tpl, "<|im_start|>")) return ChatTemplate::chatml;
    if (contains(tpl, "<<SYS>>")) return ChatTemplate::llama2;
    if (contains(tpl, "[INST]")) return ChatTemplate::mistral;
    return std::nullopt;
  }
  const auto has = [&](const char* token) { return tok.token_to_id(token).has_value(); };
  if (has("<|start_header_id|>") && has("<|eot_id|>")) return ChatTemplate::llama3;
  if (has("<|im_start|>") && has("<|im_end|>")) return ChatTemplate::chatml;
  if (has("[INST]")) return ChatTemplate::mistral;
  return std::nullopt;
}

ChatTemplate detect_chat_template(const Tokenizer& tok, std::string_view source) {
  const auto t = find_chat_template(tok);
  const std::string who = source.empty() ? std::string("the tokenizer") : "the tokenizer " + std::string(source);
  HALO_CHECK(t,
             tok.chat_template().empty()
                 ? who + " has no chat template (tokenizer_config.json) and no special tokens of a known one"
                 : who + "'s chat template is none of the known kinds",
             "; name one with --template llama3|chatml|llama2|mistral");
  return *t;
}

RenderedChat render_chat(const Tokenizer& tokenizer, ChatTemplate t, const std::vector<ChatMessage>& messages,
                         bool add_generation_prompt) {
  return tokenize(tokenizer, t, render(tokenizer, t, messages, add_generation_prompt).list);
}

std::string render_chat_text(const Tokenizer& tokenizer, ChatTemplate t, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt) {
  std::string out;
  for (const Piece& p : render(tokenizer, t, messages, add_generation_prompt).list) out += p.text;
  return out;
}

std::vector<uint32_t> end_of_turn_ids(const Tokenizer& tokenizer, ChatTemplate t) {
  const char* token = t == ChatTemplate::llama3 ? "<|eot_id|>" : t == ChatTemplate::chatml ? "<|im_end|>" : nullptr;
  std::vector<uint32_t> out;
  if (token)
    out.push_back(special_id(tokenizer, t, token));
  else
    out.push_back(special_id(tokenizer, t, token_or(tokenizer.eos_token(), "</s>")));
  if (const auto eos = tokenizer.eos_id(); eos && *eos != out[0]) out.push_back(*eos);
  return out;
}

}  // namespace halo
