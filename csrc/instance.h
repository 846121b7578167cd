/*
 * instance.h -- one instance of every cell kernel for the dtype and ISA the including file chose
 * (one of the files in csrc/isa/), collected into that instance's kernel table.
 */
#include "common.h"
#include "simd.h"
#include "gemm_kernel.h"
#include "recurrent.h"
#include "seq.h"

#include "rnn.c"
#include "lstm.c"
#include "gru.c"

#define FR_CAT3(a, b, c) a##b##c
#define FR_TABLE_NAME(d, i) FR_CAT3(fr_kernels_, d, i)

/* By member name (fastrnn.h, FR_KERNEL_TABLE): the compiler checks each entry against its member. */
const FR_TABLE_T FR_TABLE_NAME(FR_DTYPE_NAME, FR_ISA_NAME) = {
    .rnn_tape_len = rnn_tape_len,
    .rnn_forward = rnn_forward,
    .rnn_backward = rnn_backward,
    .lstm_tape_len = lstm_tape_len,
    .lstm_forward = lstm_forward,
    .lstm_backward = lstm_backward,
    .gru_tape_len = gru_tape_len,
    .gru_forward = gru_forward,
    .gru_backward = gru_backward,
    .activation = vmath_apply,
    .gemm = gk_gemm,
};
