// Chat templates of the model families halo supports, written out by hand
// (no Jinja): each renders a conversation into token ids and marks which
// tokens the loss counts. The text is what the family's Hugging Face template
// (tokenizer_config.json's chat_template) renders:
//
//   llama3   <|begin_of_text|><|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>...
//            contents trimmed. Llama 3.1 / 3.2 / 3.3 templates (their text holds
//            "Cutting Knowledge Date") always open with a system turn
//            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" +
//            the system message; the date is the templates' own fallback (the
//            date_string literal in the template text), so renders do not
//            change from day to day (transformers fills in today's date for
//            Llama 3.2 templates, which ask for strftime_now).
//   chatml   <|im_start|>ROLE\nCONTENT<|im_end|>\n...        (Qwen2, SmolLM2)
//            When the tokenizer's template inserts a default system message
//            before a conversation that has none (SmolLM2-Instruct: "You are a
//            helpful AI assistant named SmolLM, trained by Hugging Face"; Qwen2:
//            "You are a helpful assistant."), that message is taken from the
//            template text and inserted the same way.
//   llama2   <s>[INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ANSWER </s><s>[INST] ...
//            contents stripped.
//   mistral  <s>[INST] USER [/INST]ANSWER</s>[INST] ...      (Mistral-7B-Instruct v0.1 / v0.2)
//            Those templates refuse a system message; here it goes before the
//            first user message, "SYSTEM\n\nUSER". A v0.3-style template (its
//            text holds "[/INST]" right after a quote) renders
//            "<s>[INST] USER[/INST] ANSWER</s>", the answer trimmed where the
//            template trims it, the system message before the last user message
//            (only when that is the last message, for templates that test
//            loop.last; before the first for those that test loop.first).
//            llama2 and mistral: roles alternate user, assistant, ... after an
//            optional first system message.
// The template's special tokens (<|eot_id|>, <|im_start|>, <s>, ...) are
// emitted as their ids; message contents are tokenized as Hugging Face's
// apply_chat_template(tokenize=True) does (special tokens in the text are
// matched too), so the ids equal encoding the rendered text.
//
// The template of a model is found from its tokenizer (tokenizer_config.json's
// chat_template text and the special tokens present) or named by the user.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "text/tokenizer.h"

namespace halo {

enum class ChatTemplate { llama3, chatml, llama2, mistral };

// "llama3", "chatml", "llama2", "mistral"; throws naming the accepted names.
ChatTemplate parse_chat_template(std::string_view name);
std::string_view chat_template_name(ChatTemplate t);

// The template a model's tokenizer implies, from the markers in its
// chat_template text (<|start_header_id|>: llama3, <|im_start|>: chatml,
// <<SYS>>: llama2, [INST]: mistral) or, without a template text, from the
// special tokens present (<|start_header_id|> + <|eot_id|>, <|im_start|> +
// <|im_end|>, [INST]); nullopt when none matches.
std::optional<ChatTemplate> find_chat_template(const Tokenizer& tokenizer);
// The same, throwing when none matches; the error names `source` (the
// tokenizer's path, if given) and suggests --template.
ChatTemplate detect_chat_template(const Tokenizer& tokenizer, std::string_view source = {});

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// Token ids of a rendered conversation; counted[i] is 1 where token i is a
// training target (the assistant's content and its end-of-turn token), 0
// elsewhere. With add_generation_prompt the ids end with the opening of an
// assistant turn (for generation), counted all 0 there (llama2 and mistral
// have no such opening: the user turn's [/INST] ends the prompt).
// A token that holds both template text and the start of the assistant's
// content (SentencePiece's "▁Hello" after "[/INST] ") is counted.
struct RenderedChat {
  std::vector<uint32_t> ids;
  std::vector<uint8_t> counted;
};
// Throws on an empty conversation, an unknown role, a template's special
// token missing from the tokenizer, or (llama2, mistral) roles that do not
// alternate; the error names the message (0-based) at fault.
RenderedChat render_chat(const Tokenizer& tokenizer, ChatTemplate t, const std::vector<ChatMessage>& messages,
                         bool add_generation_prompt);

// The rendered conversation as text (special tokens written out), e.g. for
// showing a prompt or comparing with Hugging Face's apply_chat_template.
std::string render_chat_text(const Tokenizer& tokenizer, ChatTemplate t, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt);

// The tokens that end an assistant turn (e.g. <|eot_id|>, <|im_end|>, </s>),
// where generation stops; the tokenizer's EOS token too when it differs.
std::vector<uint32_t> end_of_turn_ids(const Tokenizer& tokenizer, ChatTemplate t);

}  // namespace halo
