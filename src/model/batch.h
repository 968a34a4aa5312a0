// One micro-batch of token rows, as the data layer builds it and the model
// consumes it. Every tensor is int32 [rows * seq_len], row-major (row r holds
// elements [r * seq_len, (r + 1) * seq_len)), all on one device.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace halo {

struct Batch {
  int64_t rows = 0;     // B
  int64_t seq_len = 0;  // T
  Tensor input_ids;     // token ids, each in [0, vocab)
  Tensor targets;       // the token each position must predict; -100: not counted
  Tensor positions;     // RoPE positions: 0, 1, 2, ... restarting at every document
  Tensor doc_ids;       // non-decreasing within a row; tokens attend within their document
  int64_t counted = 0;  // the number of targets >= 0 (known on the host)

  Batch to(Device device) const {
    return Batch{rows, seq_len, input_ids.to(device), targets.to(device), positions.to(device),
                 doc_ids.to(device), counted};
  }
};

}  // namespace halo
