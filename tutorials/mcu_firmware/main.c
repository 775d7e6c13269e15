/* main.c - a minimal firmware around a tvm-qplugin model: one inference on a sample input.
 *
 * model.h (from the C package) gives the model's integer I/O types, shapes and scales; model_run
 * needs no heap and no OS. sample_input.h is written by prepare.py: one quantized test image and
 * its label. On a real board the input comes from a sensor/camera driver, quantized with
 * MODEL_INPUT_SCALE: q = clamp(floor(x / MODEL_INPUT_SCALE + 0.5), MODEL_INPUT_QMIN, MODEL_INPUT_QMAX).
 */
#include <stdio.h>
#include "model.h"
#include "sample_input.h"

static model_output_t logits[MODEL_OUTPUT_SIZE];

int main(void) {
  int best = 0, i;
  if (model_run(sample_input, logits) != 0) {
    printf("model_run failed\n");
    return 1;
  }
  for (i = 1; i < MODEL_OUTPUT_SIZE; i++)
    if (logits[i] > logits[best]) best = i;
  printf("model_run: class %d (expected %d), arena %d bytes\n", best, SAMPLE_LABEL, MODEL_ARENA_BYTES);
  return best == SAMPLE_LABEL ? 0 : 2;
}
