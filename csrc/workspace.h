/*
 * workspace.h -- the kernels' large buffers, kept between calls (workspace.c).
 */
#ifndef FR_WORKSPACE_H
#define FR_WORKSPACE_H

#include <stddef.h>

/* A 64-byte aligned buffer of at least `bytes` bytes, or NULL.  Free it with fr_ws_free, never free(). */
void *fr_ws_alloc(size_t bytes);
/* Gives back a buffer of fr_ws_alloc (NULL is ignored): a large one is kept for a later call. */
void fr_ws_free(void *p);
/* Frees the kept buffers; returns their bytes. */
size_t fr_ws_release(void);
/* Bytes held by kept buffers now. */
size_t fr_ws_cached(void);
/* Testing knob: on != 0 fills every buffer handed out with NaN bytes first; returns the previous setting. */
int fr_ws_set_poison(int on);

#endif /* FR_WORKSPACE_H */
