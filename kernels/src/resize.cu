// Pyramid resize + normalise: uint8 HWC RGB -> float32 NCHW, Pillow's antialiased bilinear.
#include "common.cuh"

namespace {

// One axis of the separable filter: for output i, weights[i*taps + k] applies to input
// window[i].x + k, k < window[i].y (DESIGN.md "Resize + normalise").
struct Axis {
  int in_size;
  int out_size;
  int taps;         // weights per output (upper bound of any window's length)
  int2* window;     // {first input index, number of inputs}
  double* weights;
};

struct Normalise {
  float scale[3];
  float bias[3];
};

int axis_taps(int in_size, int out_size) {
  const double support = std::fmax(static_cast<double>(in_size) / out_size, 1.0);
  return 2 * static_cast<int>(std::ceil(support)) + 1;
}

// The workspace of tf_resize_normalize: the plan (the coefficients of both axes, which
// tf_resize_plan writes alone), then the rows of the horizontal pass.
struct ResizeLayout {
  size_t x_window, x_weights, y_window, y_weights, rows, total;
  size_t plan_bytes() const { return rows; }
  size_t rows_bytes() const { return total - rows; }
};

ResizeLayout resize_layout(int src_h, int src_w, int dst_h, int dst_w) {
  ResizeLayout l;
  const size_t kx = axis_taps(src_w, dst_w), ky = axis_taps(src_h, dst_h);
  l.x_window = 0;
  l.x_weights = l.x_window + tf::align_up(sizeof(int2) * dst_w);
  l.y_window = l.x_weights + tf::align_up(sizeof(double) * dst_w * kx);
  l.y_weights = l.y_window + tf::align_up(sizeof(int2) * dst_h);
  l.rows = l.y_weights + tf::align_up(sizeof(double) * dst_h * ky);
  l.total = l.rows + tf::align_up(sizeof(float) * 3 * static_cast<size_t>(src_h) * dst_w);
  return l;
}

Axis make_axis(char* base, size_t window_offset, size_t weights_offset, int in_size,
               int out_size) {
  return Axis{in_size, out_size, axis_taps(in_size, out_size),
              reinterpret_cast<int2*>(base + window_offset),
              reinterpret_cast<double*>(base + weights_offset)};
}

__device__ void axis_coefficients(const Axis a, int i) {
  const double scale = static_cast<double>(a.in_size) / a.out_size;
  const double filterscale = fmax(scale, 1.0);
  const double support = filterscale;
  const double ss = 1.0 / filterscale;
  const double center = (i + 0.5) * scale;
  const int xmin = max(static_cast<int>(center - support + 0.5), 0);  // truncates toward 0
  const int xmax = min(static_cast<int>(center + support + 0.5), a.in_size);
  const int count = min(max(xmax - xmin, 0), a.taps);
  double* w = a.weights + static_cast<size_t>(i) * a.taps;
  double total = 0.0;
  for (int k = 0; k < count; ++k) {
    const double v = fmax(0.0, 1.0 - fabs((xmin + k - center + 0.5) * ss));
    w[k] = v;
    total += v;
  }
  for (int k = 0; k < count; ++k) w[k] = total != 0.0 ? w[k] / total : 0.0;
  a.window[i] = make_int2(xmin, count);
}

__global__ void resize_coefficients_kernel(const Axis x_axis, const Axis y_axis) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < x_axis.out_size) {
    axis_coefficients(x_axis, i);
  } else if (i - x_axis.out_size < y_axis.out_size) {
    axis_coefficients(y_axis, i - x_axis.out_size);
  }
}

// rows[c][y][x] = sum_k wx[x][k] * src[y][window.x + k][c], for every source row y.
__global__ void resize_horizontal_kernel(const uint8_t* __restrict__ src, int src_h,
                                         int64_t row_bytes, const Axis x_axis,
                                         float* __restrict__ rows) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= x_axis.out_size || y >= src_h) return;
  const int2 win = x_axis.window[x];
  const double* w = x_axis.weights + static_cast<size_t>(x) * x_axis.taps;
  const uint8_t* p = src + y * row_bytes + 3 * static_cast<int64_t>(win.x);
  double r = 0.0, g = 0.0, b = 0.0;
  for (int k = 0; k < win.y; ++k, p += 3) {
    r += w[k] * p[0];
    g += w[k] * p[1];
    b += w[k] * p[2];
  }
  const size_t plane = static_cast<size_t>(src_h) * x_axis.out_size;
  const size_t o = static_cast<size_t>(y) * x_axis.out_size + x;
  rows[o] = static_cast<float>(r);
  rows[o + plane] = static_cast<float>(g);
  rows[o + 2 * plane] = static_cast<float>(b);
}

// dst[c][y][x] = (sum_k wy[y][k] * rows[c][window.x + k][x]) * scale[c] + bias[c].
__global__ void resize_vertical_kernel(const float* __restrict__ rows, const Axis y_axis,
                                       int dst_w, const Normalise norm,
                                       float* __restrict__ dst) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= dst_w || y >= y_axis.out_size) return;
  const int2 win = y_axis.window[y];
  const double* w = y_axis.weights + static_cast<size_t>(y) * y_axis.taps;
  const size_t in_plane = static_cast<size_t>(y_axis.in_size) * dst_w;
  const size_t out_plane = static_cast<size_t>(y_axis.out_size) * dst_w;
#pragma unroll
  for (int c = 0; c < 3; ++c) {
    const float* col = rows + c * in_plane + static_cast<size_t>(win.x) * dst_w + x;
    double acc = 0.0;
    for (int k = 0; k < win.y; ++k) acc += w[k] * col[static_cast<size_t>(k) * dst_w];
    const float v = static_cast<float>(acc);
    dst[c * out_plane + static_cast<size_t>(y) * dst_w + x] = v * norm.scale[c] + norm.bias[c];
  }
}

tf_status check_dim(int v, const char* name) {
  if (v < 1 || v > TF_MAX_DIM)
    return tf::fail(TF_STATUS_INVALID_SIZE, "%s = %d is outside [1, %d]", name, v, TF_MAX_DIM);
  return TF_STATUS_SUCCESS;
}

tf_status check_dims(int src_h, int src_w, int dst_h, int dst_w) {
  TF_RETURN_IF_ERROR(check_dim(src_h, "src_height"));
  TF_RETURN_IF_ERROR(check_dim(src_w, "src_width"));
  TF_RETURN_IF_ERROR(check_dim(dst_h, "dst_height"));
  return check_dim(dst_w, "dst_width");
}

// The checks of a resize's source, destination and normalisation, shared by both entry points
// (`plan`: the planned resize's, NULL-checked before `workspace`, both before the sizes).
tf_status check_resize_args(const uint8_t* src, int src_height, int src_width,
                            int64_t* src_row_bytes, const float* dst, int dst_height,
                            int dst_width, const float* channel_scale, const float* channel_bias,
                            bool planned, const void* plan, const void* workspace,
                            Normalise* norm) {
  if (src == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "src is NULL");
  if (dst == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "dst is NULL");
  if (channel_scale == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "channel_scale is NULL");
  if (channel_bias == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "channel_bias is NULL");
  if (planned && plan == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "plan is NULL");
  if (workspace == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "workspace is NULL");
  TF_RETURN_IF_ERROR(check_dims(src_height, src_width, dst_height, dst_width));
  const int64_t tight = 3 * static_cast<int64_t>(src_width);
  if (*src_row_bytes == 0) *src_row_bytes = tight;
  if (*src_row_bytes < tight)
    return tf::fail(TF_STATUS_INVALID_SIZE, "src_row_bytes = %lld is below 3 * src_width = %lld",
                    static_cast<long long>(*src_row_bytes), static_cast<long long>(tight));
  // The kernel addresses src + y * src_row_bytes + x in int64: the image's span,
  // (src_height - 1) * src_row_bytes + 3 * src_width bytes, must fit (no overflow to wrap).
  if (src_height > 1 && *src_row_bytes > (INT64_MAX - tight) / (src_height - 1))
    return tf::fail(TF_STATUS_INVALID_SIZE,
                    "src_row_bytes = %lld: %d rows that far apart span more than 2^63 - 1 bytes",
                    static_cast<long long>(*src_row_bytes), src_height);
  for (int c = 0; c < 3; ++c) {
    if (!tf::finite(channel_scale[c]) || !tf::finite(channel_bias[c]))
      return tf::fail(TF_STATUS_INVALID_VALUE, "channel %d scale/bias (%g, %g) is not finite", c,
                      channel_scale[c], channel_bias[c]);
    norm->scale[c] = channel_scale[c];
    norm->bias[c] = channel_bias[c];
  }
  if (!tf::aligned(dst, 4)) return tf::fail(TF_STATUS_MISALIGNED, "dst is not 4-byte aligned");
  return TF_STATUS_SUCCESS;
}

// A buffer of at least `need` bytes, 16-byte aligned (`what`: its argument's name).
tf_status check_buffer(const void* p, size_t bytes, size_t need, const char* what) {
  if (p == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "%s is NULL", what);
  if (!tf::aligned(p, 16)) return tf::fail(TF_STATUS_MISALIGNED, "%s is not 16-byte aligned", what);
  if (bytes < need)
    return tf::fail(TF_STATUS_WORKSPACE_TOO_SMALL, "%s_bytes = %zu, need %zu", what, bytes, need);
  return TF_STATUS_SUCCESS;
}

tf_status launch_plan(const Axis& x_axis, const Axis& y_axis, cudaStream_t s) {
  return tf::launch("resize coefficients kernel launch", resize_coefficients_kernel,
                    dim3(tf::blocks_for(x_axis.out_size + y_axis.out_size, 256)), dim3(256), 0, s,
                    x_axis, y_axis);
}

tf_status launch_passes(const uint8_t* src, int src_height, int64_t src_row_bytes, float* dst,
                        const Axis& x_axis, const Axis& y_axis, float* rows,
                        const Normalise& norm, cudaStream_t s) {
  const dim3 block(32, 8);
  TF_RETURN_IF_ERROR(tf::launch("resize horizontal kernel launch", resize_horizontal_kernel,
                                dim3(tf::blocks_for(x_axis.out_size, 32),
                                     tf::blocks_for(src_height, 8)),
                                block, 0, s, src, src_height, src_row_bytes, x_axis, rows));
  return tf::launch("resize vertical kernel launch", resize_vertical_kernel,
                    dim3(tf::blocks_for(x_axis.out_size, 32), tf::blocks_for(y_axis.out_size, 8)),
                    block, 0, s, static_cast<const float*>(rows), y_axis, x_axis.out_size, norm,
                    dst);
}

}  // namespace

extern "C" {

TINYFACES_API tf_status tf_resize_workspace_size(int src_height, int src_width, int dst_height,
                                                 int dst_width, size_t* bytes) {
  tf::clear_error();
  if (bytes == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "bytes is NULL");
  TF_RETURN_IF_ERROR(check_dims(src_height, src_width, dst_height, dst_width));
  *bytes = resize_layout(src_height, src_width, dst_height, dst_width).total;
  return TF_STATUS_SUCCESS;
}

TINYFACES_API tf_status tf_resize_normalize(const uint8_t* src, int src_height, int src_width,
                                            int64_t src_row_bytes, float* dst, int dst_height,
                                            int dst_width, const float* channel_scale,
                                            const float* channel_bias, void* workspace,
                                            size_t workspace_bytes, tf_stream_t stream) {
  tf::clear_error();
  Normalise norm;
  TF_RETURN_IF_ERROR(check_resize_args(src, src_height, src_width, &src_row_bytes, dst,
                                       dst_height, dst_width, channel_scale, channel_bias, false,
                                       nullptr, workspace, &norm));
  const ResizeLayout layout = resize_layout(src_height, src_width, dst_height, dst_width);
  TF_RETURN_IF_ERROR(check_buffer(workspace, workspace_bytes, layout.total, "workspace"));

  char* base = static_cast<char*>(workspace);
  const Axis x_axis = make_axis(base, layout.x_window, layout.x_weights, src_width, dst_width);
  const Axis y_axis = make_axis(base, layout.y_window, layout.y_weights, src_height, dst_height);
  tf::clear_stale_cuda_error();
  TF_RETURN_IF_ERROR(launch_plan(x_axis, y_axis, stream));
  return launch_passes(src, src_height, src_row_bytes, dst, x_axis, y_axis,
                       reinterpret_cast<float*>(base + layout.rows), norm, stream);
}

TINYFACES_API tf_status tf_resize_plan_size(int src_height, int src_width, int dst_height,
                                            int dst_width, size_t* plan_bytes,
                                            size_t* workspace_bytes) {
  tf::clear_error();
  if (plan_bytes == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "plan_bytes is NULL");
  if (workspace_bytes == nullptr)
    return tf::fail(TF_STATUS_NULL_POINTER, "workspace_bytes is NULL");
  TF_RETURN_IF_ERROR(check_dims(src_height, src_width, dst_height, dst_width));
  const ResizeLayout layout = resize_layout(src_height, src_width, dst_height, dst_width);
  *plan_bytes = layout.plan_bytes();
  *workspace_bytes = layout.rows_bytes();
  return TF_STATUS_SUCCESS;
}

TINYFACES_API tf_status tf_resize_plan(int src_height, int src_width, int dst_height,
                                       int dst_width, void* plan, size_t plan_bytes,
                                       tf_stream_t stream) {
  tf::clear_error();
  if (plan == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "plan is NULL");
  TF_RETURN_IF_ERROR(check_dims(src_height, src_width, dst_height, dst_width));
  const ResizeLayout layout = resize_layout(src_height, src_width, dst_height, dst_width);
  TF_RETURN_IF_ERROR(check_buffer(plan, plan_bytes, layout.plan_bytes(), "plan"));
  char* base = static_cast<char*>(plan);
  tf::clear_stale_cuda_error();
  return launch_plan(make_axis(base, layout.x_window, layout.x_weights, src_width, dst_width),
                     make_axis(base, layout.y_window, layout.y_weights, src_height, dst_height),
                     stream);
}

TINYFACES_API tf_status tf_resize_normalize_planned(
    const uint8_t* src, int src_height, int src_width, int64_t src_row_bytes, float* dst,
    int dst_height, int dst_width, const float* channel_scale, const float* channel_bias,
    const void* plan, size_t plan_bytes, void* workspace, size_t workspace_bytes,
    tf_stream_t stream) {
  tf::clear_error();
  Normalise norm;
  TF_RETURN_IF_ERROR(check_resize_args(src, src_height, src_width, &src_row_bytes, dst,
                                       dst_height, dst_width, channel_scale, channel_bias, true,
                                       plan, workspace, &norm));
  const ResizeLayout layout = resize_layout(src_height, src_width, dst_height, dst_width);
  TF_RETURN_IF_ERROR(check_buffer(plan, plan_bytes, layout.plan_bytes(), "plan"));
  TF_RETURN_IF_ERROR(check_buffer(workspace, workspace_bytes, layout.rows_bytes(), "workspace"));
  char* base = const_cast<char*>(static_cast<const char*>(plan));  // the passes only read it
  tf::clear_stale_cuda_error();
  return launch_passes(src, src_height, src_row_bytes, dst,
                       make_axis(base, layout.x_window, layout.x_weights, src_width, dst_width),
                       make_axis(base, layout.y_window, layout.y_weights, src_height, dst_height),
                       static_cast<float*>(workspace), norm, stream);
}

}  // extern "C"
