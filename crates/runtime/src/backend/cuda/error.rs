//! Turning CUDA driver, cuBLAS, cuBLASLt and NVRTC status codes into braid's [`Error`],
//! and deciding which of them are *sticky*: errors after which the CUDA
//! context is unusable, so the device must be poisoned instead of retried.

use crate::error::Error;
use cudarc::cublas::sys::cublasStatus_t;
use cudarc::driver::sys::CUresult;
use cudarc::driver::DriverError;

/// The driver's name and description of a status code.
pub(crate) fn driver_strings(code: CUresult) -> (String, String) {
    let e = DriverError(code);
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{code:?}"));
    let msg = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown error".into());
    (name, msg)
}

/// `Error::Backend` for a failed driver call.
pub(crate) fn driver_error(call: &str, code: CUresult) -> Error {
    let (name, message) = driver_strings(code);
    Error::Backend { backend: "cuda", call: call.to_string(), code: code as i64, name, message }
}

/// `Error::Backend` for a failed cuBLAS call.
pub(crate) fn cublas_error(call: &str, status: cublasStatus_t) -> Error {
    let message = match status {
        cublasStatus_t::CUBLAS_STATUS_NOT_INITIALIZED => "cuBLAS not initialized",
        cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED => "cuBLAS could not allocate",
        cublasStatus_t::CUBLAS_STATUS_INVALID_VALUE => "invalid value",
        cublasStatus_t::CUBLAS_STATUS_ARCH_MISMATCH => "not supported by this GPU architecture",
        cublasStatus_t::CUBLAS_STATUS_EXECUTION_FAILED => "the GPU program failed to execute",
        cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => "not supported",
        _ => "cuBLAS error",
    };
    Error::Backend { backend: "cuda", call: call.to_string(), code: status as i64, name: format!("{status:?}"), message: message.into() }
}

/// `Error::Backend` for a failed cuBLASLt call (its own status type, the
/// same codes as cuBLAS).
pub(crate) fn cublaslt_error(call: &str, status: cudarc::cublaslt::sys::cublasStatus_t) -> Error {
    use cudarc::cublaslt::sys::cublasStatus_t as S;
    let message = match status {
        S::CUBLAS_STATUS_NOT_INITIALIZED => "cuBLASLt not initialized",
        S::CUBLAS_STATUS_ALLOC_FAILED => "cuBLASLt could not allocate",
        S::CUBLAS_STATUS_INVALID_VALUE => "invalid value",
        S::CUBLAS_STATUS_ARCH_MISMATCH => "not supported by this GPU architecture",
        S::CUBLAS_STATUS_EXECUTION_FAILED => "the GPU program failed to execute",
        S::CUBLAS_STATUS_NOT_SUPPORTED => "not supported",
        _ => "cuBLASLt error",
    };
    Error::Backend { backend: "cuda", call: call.to_string(), code: status as i64, name: format!("{status:?}"), message: message.into() }
}

/// Errors after which the context cannot be used again (CUDA documents these
/// as leaving the process in an inconsistent state: every later call fails).
pub(crate) fn is_sticky(code: CUresult) -> bool {
    matches!(
        code,
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
            | CUresult::CUDA_ERROR_LAUNCH_FAILED
            | CUresult::CUDA_ERROR_LAUNCH_TIMEOUT
            | CUresult::CUDA_ERROR_ASSERT
            | CUresult::CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUresult::CUDA_ERROR_MISALIGNED_ADDRESS
            | CUresult::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUresult::CUDA_ERROR_INVALID_PC
            | CUresult::CUDA_ERROR_ECC_UNCORRECTABLE
            | CUresult::CUDA_ERROR_CONTEXT_IS_DESTROYED
    )
}
